"""Every argument name the binding puts in an error message is a parameter of the method that
raises it (static: reads rust/python/src/*.rs). The fuzz test (test_fuzz_api.py) kept finding
misnamed arguments one seed at a time ("size" for clear_page_list's `page`); this finds them all."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "rust" / "python" / "src"
# the argument helpers of args.rs/lib.rs, called as helper(value, "name", ...)
CALL = re.compile(r'\b(?:int_arg|size_arg|array_arg(?:::<\w+>)?|col_arg(?:::<\w+>)?|page_size_arg|self\.cpu|'
                  r'self\.cpu_list|Self::key|rmp_asid|Self::key_list)\(\s*&?[A-Za-z_][\w.]*\s*,\s*"([^"]+)"')
FN = re.compile(r'\bfn\s+(\w+)\s*(?:<[^>]*>)?\s*\(')
# helpers that take the name as a parameter: their literal names belong to their callers
HELPER_FILES = {"args.rs"}


def _params(sig: str) -> set[str]:
    return set(re.findall(r'(?:^|[(,])\s*(?:mut\s+)?([a-z_]\w*)\s*:', sig))


def _functions(text: str):
    """(name, parameter names, body) of each fn, the body running to the next fn."""
    starts = [m for m in FN.finditer(text)]
    for k, m in enumerate(starts):
        depth, i = 0, m.end() - 1
        while True:  # the parameter list, parentheses balanced
            if text[i] == "(":
                depth += 1
            elif text[i] == ")":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        end = starts[k + 1].start() if k + 1 < len(starts) else len(text)
        yield m.group(1), _params(text[m.end() - 1:i + 1]), text[i:end]


def test_error_messages_name_a_parameter_of_their_method():
    bad = []
    checked = 0
    for f in sorted(SRC.glob("*.rs")):
        if f.name in HELPER_FILES:
            continue
        for name, params, body in _functions(f.read_text()):
            allowed = params | ({name[4:]} if name.startswith("set_") else set())  # property setters
            for m in CALL.finditer(body):
                checked += 1
                if m.group(1) not in allowed:
                    bad.append(f"{f.name}: fn {name}({', '.join(sorted(params))}) reports {m.group(1)!r}")
    assert checked > 100, checked  # the scan found the calls
    assert not bad, "\n".join(bad)
