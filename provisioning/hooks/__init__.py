"""The plugin contract and its host: the hookspecs, loading the plugin a configuration names, and the facade that turns a plugin's failure into a return value."""
