"""What every part stands on and nothing of the project below it: the Entry, the clock, the numbers (exit codes, return values), safe files, logging, secrets, check lines."""
