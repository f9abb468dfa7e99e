"""The Generic/Exec service plugin: one operator's command per request type.

For each request ([Exec] ADD_CMD, MODIFY_CMD, DELETE_CMD) the command runs
with no arguments, the request on stdin as one JSON object and
PROVISIONING_VERB and PROVISIONING_DN in its environment; its exit code is
the request's return value. Nothing from the entry is ever put on a command
line. Registered in the ``provisioning.plugins`` entry-point group as
``Generic/Exec``, like any external plugin; imported as
``provisioning_generic_exec``. The worked example of docs/PLUGINS.md.
"""

# How a checkout's plugins/ folder names this plugin without an install (the
# same line as its entry point in setup.cfg): see provisioning.plugins.
PROVISIONING_ENTRY_POINT = "Generic/Exec = provisioning_generic_exec.plugin:GenericExec"
