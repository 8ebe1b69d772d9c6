# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action of higgs.vpn.program (documentation: plugins/modules/program.py).

Builds a zipapp of a package in the collection's ``programs/`` on the controller, deterministically
(the same content gives the same bytes), and installs it: one remote stat when the node already has
those bytes with that owner, group and mode; otherwise the copy action does the transfer. When
``probed`` holds what the node role's probe read of ``dest`` earlier in the run, it stands in for the
remote stat (module_utils/_probed): no round trip when nothing differs, the copy alone otherwise.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from ansible import constants as C
from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.higgs.vpn.plugins.module_utils._probed import program_satisfied

PROGRAMS = Path(__file__).resolve().parents[2] / "programs"

# Fixed metadata of every entry: the archive depends on the names and contents only.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
ZIP_MODE = 0o100644 << 16
ZIP_UNIX = 3

ARGUMENT_SPEC = {
    "package": {"type": "str", "required": True},
    "entry_point": {"type": "str", "required": True},
    "dest": {"type": "path", "required": True},
    "owner": {"type": "str"},
    "group": {"type": "str"},
    "mode": {"type": "str", "default": "0644"},
    "probed": {"type": "dict"},
    "probed_key": {"type": "str", "no_log": True},
}

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
MAIN = """\
# Built by higgs.vpn.program from the package {package}: runs {entry_point}.
import sys

from {module} import {function}

sys.exit({function}())
"""


def package_files(programs: Path, package: str) -> list[tuple[str, bytes]]:
    """(name in the archive, content) of every file of the package, sorted by name; no bytecode."""
    if not re.fullmatch(IDENT, package):
        raise ValueError("package %r is not a Python package name (e.g. higgs_relay)" % package)
    root = programs / package
    if not (root / "__init__.py").is_file():
        available = sorted(p.name for p in programs.iterdir() if (p / "__init__.py").is_file())
        raise ValueError("package %r is not in %s (there: %s)" % (package, programs, ", ".join(available)))
    files = []
    for path in root.rglob("*"):
        rel = path.relative_to(programs)
        if path.is_file() and "__pycache__" not in rel.parts and path.suffix not in (".pyc", ".pyo"):
            files.append((rel.as_posix(), path.read_bytes()))
    return sorted(files)


def build_zipapp(programs: Path, package: str, entry_point: str) -> bytes:
    """A zipapp (``python3 app.pyz``) of the package that runs ``module:function``.

    Entries are stored uncompressed, sorted, with fixed dates and modes, so that the bytes depend on the
    package's files only (not on the controller's clock, zlib or file system).
    """
    files = package_files(programs, package)
    match = re.fullmatch(r"(%s(?:\.%s)*):(%s)" % (IDENT, IDENT, IDENT), entry_point)
    if not match or match.group(1).split(".")[0] != package:
        raise ValueError("entry_point %r must be module:function with the module in the package %s, e.g. %s.main:main"
                         % (entry_point, package, package))
    module, function = match.groups()
    main = MAIN.format(package=package, entry_point=entry_point, module=module, function=function)
    entries = [("__main__.py", main.encode()), *files]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for name, data in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.create_system = ZIP_UNIX
            info.external_attr = ZIP_MODE
            archive.writestr(info, data)
    return buf.getvalue()


def listing(data: bytes) -> str:
    """One line per entry (size and SHA-256), for diff mode."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        lines = ["%s %d %s\n" % (info.filename, info.file_size, hashlib.sha256(archive.read(info)).hexdigest()[:16])
                 for info in archive.infolist()]
    return "".join(lines)


class ActionModule(ActionBase):
    # no remote temporary directory unless the transfer needs one (the copy action makes and removes its own)
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_diff = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        try:
            return self._install(result, task_vars or {})
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)

    def _install(self, result, task_vars):
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        mode = args["mode"]
        if not re.fullmatch(r"0?[0-7]{3}", mode):
            raise AnsibleActionFail("mode %r must be octal file permissions such as 0644 (a string)" % mode)
        dest = args["dest"]
        if not os.path.isabs(dest) or dest.endswith("/"):
            raise AnsibleActionFail("dest %r must be the absolute path of the file to install, e.g. "
                                    "/usr/local/lib/myprog/myprog.pyz" % dest)
        try:
            data = build_zipapp(PROGRAMS, args["package"], args["entry_point"])
        except (OSError, ValueError) as exc:
            raise AnsibleActionFail(str(exc)) from exc
        checksum = hashlib.sha1(data).hexdigest()  # the stat module's checksum
        result.update(dest=dest, checksum=checksum, size=len(data))

        probed = args["probed"]
        if probed is not None and dest in probed:
            record = probed[dest]
            if program_satisfied(record, data, args["owner"], args["group"], mode, args["probed_key"]):
                result.update(changed=False, on_controller=True)
                return result
            before = "present (another archive or other attributes)\n" if record else ""
        else:
            stat = self._execute_remote_stat(dest, all_vars=task_vars, follow=False)
            if (stat["exists"] and stat.get("isreg") and stat["checksum"] == checksum
                    and int(stat["mode"], 8) == int(mode, 8)
                    and args["owner"] in (None, stat.get("pw_name"), str(stat.get("uid")))
                    and args["group"] in (None, stat.get("gr_name"), str(stat.get("gid")))):
                result["changed"] = False
                return result
            before = "sha1 %s\n" % stat["checksum"] if stat["exists"] else ""

        local_dir = tempfile.mkdtemp(dir=C.DEFAULT_LOCAL_TMP)
        try:
            local = os.path.join(local_dir, os.path.basename(dest))
            with open(local, "wb") as handle:
                handle.write(data)
            task = self._task.copy()
            # The directory ends with "/": the copy module creates it when missing.
            task.args = {"src": local, "dest": os.path.dirname(dest) + "/", "mode": mode, "force": True,
                         **{key: args[key] for key in ("owner", "group") if args[key] is not None}}
            copy = self._shared_loader_obj.action_loader.get(
                "ansible.legacy.copy", task=task, connection=self._connection, play_context=self._play_context,
                loader=self._loader, templar=self._templar, shared_loader_obj=self._shared_loader_obj)
            copied = copy.run(task_vars=task_vars)
        finally:
            shutil.rmtree(local_dir, ignore_errors=True)
        if copied.get("failed"):
            return copied
        result["changed"] = bool(copied.get("changed"))
        if self._task.diff and result["changed"]:
            result["diff"] = {"before_header": dest, "after_header": "%s (%s)" % (dest, args["entry_point"]),
                              "before": before, "after": "sha1 %s\n%s" % (checksum, listing(data))}
        return result
