"""Rewrite the src/ deps of every dvc.yaml stage to its import closure, as tests/test_stage_deps.py computes it.

Run after changing which project modules a stage imports: `.venv/bin/python scripts/stage_deps.py`;
the test fails (listing the missing files) until dvc.yaml and the code agree. Comments on kept paths survive.
"""
import re, shlex, sys
from pathlib import Path
import yaml
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import test_stage_deps as t

doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
PKG = REPO / "src" / "dermagan"

def py_files(d):
    return {p.relative_to(REPO).as_posix() for p in d.rglob("*.py") if "__pycache__" not in p.parts}

def compact(files):
    files = set(files); out = set(files)
    dirs = sorted({p for p in PKG.rglob("*") if p.is_dir() and "__pycache__" not in p.parts}, key=lambda p: len(p.parts))
    for d in dirs:  # shallowest first
        inside = py_files(d)
        rel = d.relative_to(REPO).as_posix()
        if inside and inside <= files and not any(rel.startswith(o + "/") for o in out if not o.endswith(".py")):
            out -= inside; out.add(rel)
    # drop folders nested inside a kept folder
    return sorted(out)

lines = (REPO / "dvc.yaml").read_text().splitlines(keepends=True)
out, i, stage, in_deps, inserted, counts = [], 0, None, False, False, {}
new_lists = {}
for name, body in doc["stages"].items():
    body = body.get("do", body)
    cmd = body["cmd"]
    sub = shlex.split(cmd)[1]
    new_lists[name] = sorted(t.subcommand_files(sub))
comments = {}
for line in lines:
    m = re.match(r"^  ([A-Za-z_][\w-]*):", line)
    if m and not line.startswith("   "):
        stage, in_deps, inserted = m.group(1), False, False
    if stage and re.match(r"^\s+deps:\s*(#.*)?$", line):
        in_deps = True; out.append(line); continue
    if in_deps and re.match(r"^\s+(params|outs|metrics|plots|cmd|do|matrix|foreach):", line):
        in_deps = False
    sm = re.match(r"^(\s+)- (src/\S+)(\s+#.*)?\n$", line)
    if in_deps and sm:
        indent = sm.group(1)
        if sm.group(3): comments[(stage, sm.group(2))] = sm.group(3)
        if not inserted:
            inserted = True
            for path in new_lists[stage]:
                c = comments.get((stage, path), "")
                out.append(f"{indent}- {path}\n")  # comments re-attached in a second pass
        continue
    out.append(line)
text = "".join(out)
# second pass: re-attach the comments of paths that survived
res = []
stage = None
for line in text.splitlines(keepends=True):
    m = re.match(r"^  ([A-Za-z_][\w-]*):", line)
    if m and not line.startswith("   "): stage = m.group(1)
    sm = re.match(r"^(\s+)- (src/\S+)\n$", line)
    if sm and (stage, sm.group(2)) in comments:
        line = f"{sm.group(1)}- {sm.group(2)}{comments[(stage, sm.group(2))]}\n"
    res.append(line)
(REPO / "dvc.yaml").write_text("".join(res))
for k, v in new_lists.items(): print(k, len(v), "entries")
