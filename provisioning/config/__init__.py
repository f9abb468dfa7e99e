"""Reading and checking the configuration files: the INI reader, the configspecs, the validated configuration and the files the package ships."""
