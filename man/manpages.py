"""The man pages, made from what they describe, so they cannot drift from it.

    python3 man/manpages.py            write the pages into man/
    python3 man/manpages.py --check    exit 1, naming them, if pages differ from what the code says now

- provisioning-daemon(8): the argparse parsers of the command and of each
  sub-command (options, help texts, usage), and the exit codes with the
  comments provisioning/base/codes.py gives them;
- provisioning.conf(5): the configspecs (provisioning/config/specs/*.spec and the
  spec of each plugin in the checkout's plugins/), every key with its type,
  default and the comment above it;
- prov-backup-create-chroot(8), createBackupAccountLDIF(1),
  loadOpenLDAPsingleLDIF(1): their parsers and docstrings;
- and docs/configuration.md's key tables, from the same configspecs
  (provisioning.config.confdoc: the page's prose is written by hand, only
  the tables between its markers are made here).

The pages are committed (a reader of the repository sees them, the Debian
package installs them); t/test_manpages.py fails when one is not current,
t/test_docs.py when docs/configuration.md is not.
Run it with the interpreter of the checkout (.venv/bin/python or
bin/system-python): it imports the checkout.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Callable, Iterator

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIGURATION_DOC = REPO / "docs/configuration.md"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Fixed, so that a page does not depend on who made it, when, or in which terminal.
DATE = "2026-12-07"
SOURCE = "provisioning"
MANUAL = "provisioning"


# --------------------------------------------------------------------- roff

def roff(text: str) -> str:
    """Text as roff: backslashes and hyphens escaped, no line starting with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.split("\n"))


def bold(text: str) -> str:
    return f"\\fB{roff(text)}\\fR"


def italic(text: str) -> str:
    return f"\\fI{roff(text)}\\fR"


def header(name: str, section: int, title: str) -> list[str]:
    return [f'.TH "{name.upper()}" "{section}" "{DATE}" "{SOURCE}" "{MANUAL}"', ".SH NAME",
            f"{roff(name)} \\- {roff(title)}"]


def paragraphs(text: str) -> list[str]:
    """Plain text (blank lines between paragraphs) as .PP paragraphs."""
    out = []
    for block in re.split(r"\n\s*\n", textwrap.dedent(text).strip()):
        if block.startswith(" "):                   # an indented block (a docstring's literal): as it is
            out += [".PP", ".nf", roff(textwrap.dedent(block)), ".fi"]
        else:                                       # "...::" introduces such a block (reST): one colon
            out += [".PP", roff(" ".join(block.split()).removesuffix(":") if block.endswith("::")
                                else " ".join(block.split()))]
    return out


# ------------------------------------------------------------------ parsers

class _Built(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


@contextlib.contextmanager
def _columns(width: int) -> Iterator[None]:
    """argparse wraps usage lines at $COLUMNS: make it wide, the page does its own filling."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def captured(build: Callable[[], object]) -> argparse.ArgumentParser:
    """The parser ``build`` makes, taken at its parse_args(), before anything else runs.

    Each command builds its parser inside the function that parses (there is
    no separate "make the parser" function to call), so the call is stopped
    right there; nothing after parsing runs.
    """
    original = argparse.ArgumentParser.parse_args

    def grab(self, *args, **kwargs):
        raise _Built(self)

    argparse.ArgumentParser.parse_args = grab          # type: ignore[method-assign]
    try:
        build()
    except _Built as built:
        return built.parser
    finally:
        argparse.ArgumentParser.parse_args = original   # type: ignore[method-assign]
    raise RuntimeError(f"{build} made no parser")


def _checkout_plugins() -> None:
    """Make the checkout's plugin packages importable under their names (as the daemon does)."""
    from provisioning.hooks import loading as plugins

    for found in plugins.in_folders()[0]:
        plugins.load(*found.name.split("/"))


def parsers() -> dict[str, argparse.ArgumentParser]:
    """provisioning-daemon's parser ("") and each sub-command's, by name; then the other commands'."""
    import importlib

    from provisioning import cli
    from provisioning.operator import ldifload

    _checkout_plugins()
    from provisioning_backup_rsnapshot import account_ldif

    found = {"": captured(lambda: cli.parse_args([]))}
    for name, module_name in cli.SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        # Each sub-command module parses in parse_args, or (new-plugin) in main.
        found[name] = captured(lambda: getattr(module, "parse_args", module.main)([]))
    found["loadOpenLDAPsingleLDIF"] = captured(lambda: ldifload.main([]))
    found["createBackupAccountLDIF"] = captured(lambda: account_ldif.parse_args([]))
    return found


def subcommands() -> list[str]:
    from provisioning import cli

    return list(cli.SUBCOMMANDS)


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    text = parser._get_formatter()._expand_help(action) if action.help else ""
    return _general(text)


def _general(text: str) -> str:
    """Paths that depend on where the page is made (a virtualenv, a checkout) said generally."""
    from provisioning.config import resources
    from provisioning.config.loader import global_config_candidates

    installation, host, package = (str(p) for p in global_config_candidates())
    text = text.replace(installation, "PREFIX/etc/Provisioning/Global.conf (PREFIX: the Python "
                                      "installation's, /usr for the Debian package)")
    text = text.replace(package, "the package's own (the defaults)")
    return text.replace(str(resources.etc_root()), "the package's etc folder")


def _usage(parser: argparse.ArgumentParser) -> str:
    with _columns(10_000):
        usage = parser.format_usage()
    return " ".join(usage.removeprefix("usage: ").split())


def synopsis(parser: argparse.ArgumentParser) -> list[str]:
    prog, _, rest = _usage(parser).partition(" ")
    if parser.prog.startswith("provisioning-daemon "):         # a sub-command: two words
        sub, _, rest = rest.partition(" ")
        prog = f"{prog} {sub}"
    return [".HP", f"{bold(prog)} {roff(rest)}"]


def options(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            value = "" if action.nargs == 0 else " " + " ".join(
                italic(v) for v in (action.metavar if isinstance(action.metavar, tuple)
                                    else [action.metavar or action.dest.upper()] * (action.nargs or 1)
                                    if isinstance(action.nargs, int) else [action.metavar or action.dest.upper()]))
            names = ", ".join(bold(o) + value for o in action.option_strings)
        else:
            names = italic(action.metavar or action.dest)
        out += [".TP", names, roff(_help(parser, action))]
    return out


# --------------------------------------------------------------- exit codes

def exit_codes() -> list[tuple[int, str, str]]:
    """(value, NAME, the comment after it in provisioning/base/codes.py) of every ExitCode."""
    from provisioning.base import codes

    found: list[list] = []
    source = inspect.getsource(codes.ExitCode)
    for line in source.splitlines()[1:]:
        member = re.match(r"\s+([A-Z_]+) = (\d+)\s*(?:#\s*(.*))?$", line)
        more = re.match(r"\s+#\s*(.*)$", line)
        if member:
            found.append([int(member.group(2)), member.group(1), member.group(3) or ""])
        elif more and found:
            found[-1][2] += " " + more.group(1)
    return [(value, name, text) for value, name, text in found]


# --------------------------------------------------------------- configspecs

def spec_page(sections: list) -> list[str]:
    from provisioning.config.specdoc import describe_check

    out = []
    for section in sections:
        out += [".SS", roff(f"[{section.name}]")]
        for group in section.groups:
            keys = [f"{bold(key)} = {roff(describe_check(check))}" for key, check in group.keys]
            # .TQ: one more tag line for the same paragraph (groff's man extensions).
            out += [".TP", "\n.TQ\n".join(keys), roff(group.text)]
    return out


def plugin_specs() -> list[tuple[str, str]]:
    """(SERVICE/TYPE, configspec text) of each plugin in the checkout's plugins/."""
    from provisioning.hooks import loading as plugins

    specs = []
    for found in sorted(plugins.in_folders()[0], key=lambda f: f.name):
        manager = plugins.load(*found.name.split("/"))
        text = "\n".join(s for s in manager.hook.provisioning_config_spec() if s)
        specs.append((found.name, text))
    return specs


def spec_texts() -> dict[str, str]:
    """Every configspec by the name docs/configuration.md gives it: service.spec, each plugin's SERVICE/TYPE,
    global.spec."""
    from provisioning.config import resources

    return {"service.spec": resources.configspec_text("service.spec"), **dict(plugin_specs()),
            "global.spec": resources.configspec_text("global.spec")}


def configuration_doc() -> tuple[str, list[str]]:
    """docs/configuration.md with its key tables made again, and the sections it has no place for."""
    from provisioning.config import confdoc

    return confdoc.update(CONFIGURATION_DOC.read_text(encoding="utf-8"), spec_texts())


# ------------------------------------------------------------------- pages

def daemon_page() -> str:
    every = parsers()
    main = every[""]
    out = header("provisioning-daemon", 8, "make this host follow the provisioning requests in an OpenLDAP directory")
    out += [".SH SYNOPSIS"] + synopsis(main)
    for name in subcommands():
        out += synopsis(every[name])
    out += [".SH DESCRIPTION"] + paragraphs("""
        provisioning-daemon follows SERVICE_SUBTREE of an OpenLDAP directory as an RFC 4533 syncrepl
        consumer. An entry asks for work with sstProvisioningMode add, modify or delete and
        sstProvisioningState 0; the daemon claims it, has the service plugin its configuration names
        do the work on this host, and writes the outcome back (sstProvisioningMode added, modified or
        deleted, sstProvisioningState the time, sstProvisioningReturnValue 0, or the plugin's return
        value on failure). A claim is atomic, the sync cookie passes an entry only once its outcome is
        written, and an outcome the directory does not take is kept and written later.

        Without a sub-command it runs the daemon (in the foreground: under systemd, see
        provisioning@.service), or with --check checks everything and exits. Logs go to syslog under
        [Service] SYSLOG (facility local0), to stderr without /dev/log, and to stdout as well with
        --debug.""")
    out += [".SH OPTIONS"] + options(main)
    out += [".SH COMMANDS"]
    for name in subcommands():
        parser = every[name]
        out += [".SS", bold(f"provisioning-daemon {name}")] + synopsis(parser)
        out += [".PP", roff(_general(parser.description or ""))] + options(parser)
    out += [".SH EXIT STATUS", ".PP", roff("provisioning-daemon and its sub-commands other than status and audit:")]
    for value, name, text in exit_codes():
        out += [".TP", bold(str(value)), roff(f"{name}: {text}")]
    out += [".PP", roff("provisioning-daemon status exits as a monitoring plugin (Nagios, Icinga): 0 OK, "
                        "1 WARNING, 2 CRITICAL, 3 UNKNOWN (the configuration is invalid, the command line "
                        "is wrong, or the directory cannot be asked)."),
            ".PP", roff("provisioning-daemon audit exits in the same convention: 0 clean, 1 drift found, "
                        "2 the directory or the host could not be read whole, 3 usage.")]
    out += [".SH SIGNALS", ".TP", bold("SIGTERM") + ", " + bold("SIGINT"),
            roff("Stop after the work in hand: no new work is taken, the commands running finish, their "
                 "outcomes and the cookie are written; exit 0."),
            ".TP", bold("SIGHUP"),
            roff("Reopen the logs and read both files again: the log levels and Global.conf's [Mail] take "
                 "effect at once; a file that does not validate changes nothing. systemctl reload sends "
                 "it.")]
    out += [".SH FILES", ".TP", bold("/etc/Provisioning/SERVICE/TYPE.conf"),
            roff("A service configuration, e.g. /etc/Provisioning/Backup/Rsnapshot.conf; the instance "
                 "provisioning@Backup-Rsnapshot.service of the unit runs it. See provisioning.conf(5)."),
            ".TP", bold("/etc/Provisioning/Global.conf"),
            roff("Settings shared by the daemons of a host (LDAP retries, mail alerts); optional."),
            ".TP", bold("/var/lib/provisioning"),
            roff("The state: COOKIE_FILE, its store (.sqlite) and its lock (.lock); root's alone."),
            ".TP", bold("/usr/lib/systemd/system/provisioning@.service"),
            roff("The systemd unit; one instance per service configuration.")]
    out += [".SH SEE ALSO", roff("provisioning.conf(5), prov-backup-create-chroot(8), "
                                 "createBackupAccountLDIF(1), loadOpenLDAPsingleLDIF(1), systemctl(1), "
                                 "/usr/share/doc/provisioning/deployment.md.gz")]
    return "\n".join(out) + "\n"


def conf_page() -> str:
    from provisioning.config import resources
    from provisioning.config.specdoc import spec_sections

    out = header("provisioning.conf", 5, "configuration files of provisioning-daemon")
    out += [".SH SYNOPSIS", bold("/etc/Provisioning/SERVICE/TYPE.conf"), ".br",
            bold("/etc/Provisioning/Global.conf")]
    out += [".SH DESCRIPTION"] + paragraphs("""
        provisioning-daemon(8) reads two files: the service configuration named with -c, which
        chooses the plugin ([Service] SERVICE and TYPE) and holds the LDAP password (keep it 0600),
        and Global.conf, shared by the daemons of a host (-g, else the first of
        PREFIX/etc/Provisioning/Global.conf, /etc/Provisioning/Global.conf and the package's own).
        Both are checked against the specifications below at every start, every check of -t and
        every SIGHUP; every problem is reported at once, with file, section and key. A key or a
        section no specification knows is refused too (with a "did you mean" where one is close).

        The format is that of the original Perl daemon (Config::IniFiles): [Section] lines and KEY =
        VALUE lines. A comment is a whole line whose first non-blank character is # or ;. There
        are no comments after a value: # and ; are part of it. A value runs from the first non-blank
        character after = to the end of the line; it is not split at commas, not unquoted, and % means
        nothing special. A key or section given twice is an error.

        Booleans are 1 or 0 (also yes/no, true/false, on/off). The examples are
        /usr/share/doc/provisioning/examples (provisioning-daemon files lists the package's copies).""")
    out += [".SH THE SERVICE CONFIGURATION"]
    out += spec_page(spec_sections(resources.configspec_text("service.spec")))
    for name, text in plugin_specs():
        out += [".SH " + roff(f"PLUGIN {name}"), ".PP",
                roff(f"[Service] SERVICE = {name.split('/')[0]}, TYPE = {name.split('/')[1]} adds:")]
        out += spec_page(spec_sections(text))
    out += [".SH GLOBAL.CONF"] + spec_page(spec_sections(resources.configspec_text("global.spec")))
    out += [".SH SEE ALSO", roff("provisioning-daemon(8), /usr/share/doc/provisioning/configuration.md.gz")]
    return "\n".join(out) + "\n"


def simple_page(name: str, section: int, title: str, parser: argparse.ArgumentParser, text: str) -> str:
    out = header(name, section, title) + [".SH SYNOPSIS"] + synopsis(parser)
    out += [".SH DESCRIPTION"] + paragraphs(text) + [".SH OPTIONS"] + options(parser)
    out += [".SH SEE ALSO", roff("provisioning-daemon(8)")]
    return "\n".join(out) + "\n"


def chroot_page() -> str:
    _checkout_plugins()
    from provisioning_backup_rsnapshot import chroot

    out = header("prov-backup-create-chroot", 8, "make a backup account's jail (CREATE_CHROOT_CMD)")
    out[-1] = (f"{roff('prov-backup-create-chroot, prov-backup-create-home')} \\- "
               f"{roff('make a backup account’s jail and home (CREATE_CHROOT_CMD)')}")
    out += [".SH SYNOPSIS", ".HP", f"{bold('prov-backup-create-chroot')} {italic('JAIL HOME UID UIDNUMBER GIDNUMBER')}",
            ".HP", f"{bold('prov-backup-create-home')} {italic('JAIL HOME UID UIDNUMBER GIDNUMBER')}"]
    out += [".SH DESCRIPTION"] + paragraphs(chroot.__doc__.split("\n", 1)[1])
    out += [".SH ENVIRONMENT", ".TP", bold("CHROOT_PROGRAMS"),
            roff("prov-backup-create-chroot: the programs copied into the jail, with the libraries they "
                 "need and a script's interpreters, looked for as [Backup] JAIL_PROGRAMS: " + chroot.main_chroot.__doc__.split("(programs: ", 1)[1].rstrip(")"))]
    out += [".SH SEE ALSO", roff("provisioning-daemon(8), provisioning.conf(5) ([Backup] CREATE_CHROOT_CMD)")]
    return "\n".join(out) + "\n"


def pages() -> dict[str, str]:
    """File name in man/ -> its text."""
    from provisioning.operator import ldifload

    _checkout_plugins()
    from provisioning_backup_rsnapshot import account_ldif

    every = parsers()
    return {
        "provisioning-daemon.8": daemon_page(),
        "provisioning.conf.5": conf_page(),
        "prov-backup-create-chroot.8": chroot_page(),
        "createBackupAccountLDIF.1": simple_page(
            "createBackupAccountLDIF", 1, "write the LDIF files of the wiki's four steps for a backup account",
            every["createBackupAccountLDIF"], account_ldif.__doc__),
        "loadOpenLDAPsingleLDIF.1": simple_page(
            "loadOpenLDAPsingleLDIF", 1, "load one LDIF file into the directory of a service configuration",
            every["loadOpenLDAPsingleLDIF"], ldifload.__doc__),
    }


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    stale = []
    for name, text in pages().items():
        path = HERE / name
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    doc, problems = configuration_doc()
    for problem in problems:
        print(f"docs/configuration.md: {problem}", file=sys.stderr)
    if check:
        if CONFIGURATION_DOC.read_text(encoding="utf-8") != doc:
            stale.append("docs/configuration.md")
    else:
        CONFIGURATION_DOC.write_text(doc, encoding="utf-8")
    if stale:
        print(f"man pages not current: {', '.join(stale)}; run: python3 man/manpages.py", file=sys.stderr)
        return 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
