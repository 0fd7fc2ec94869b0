#!/usr/bin/env python3
"""Fails when C++ sources read JSON other than through json::Fields (format/json.hpp).

The rule, textual so that it is cheap (comments and the contents of string literals are ignored):
  1. A subscript by a string literal, `X["key"]`, is allowed only as the target of an assignment,
     `X["key"] = value;` (alone or at the end of a chain of subscripts): a write into a Json being built, which
     does not compile on a const value. Any other `["key"]` is a read.
  2. A name declared in the file with a const JSON type (`const json::Json& doc`, `const Json x`,
     `const nlohmann::ordered_json& v`, parameters included) is never subscripted: `doc[...]` is a read of a const
     value, whose operator[] has undefined behaviour on a missing key.
  3. `.at("key")` and `.value("key", ...)` are reads that bypass Fields (the first throws nlohmann's exception,
     not a ckpt::Error; the second silently takes a default on a wrong type).
What it cannot see: a name declared `auto` and bound to a JSON value, then subscripted by a variable. Reads of
file content go through Fields, which leaves nothing for such a name to be.

Usage: check_json_reads.py FILE_OR_DIRECTORY...   (directories: their *.cpp and *.hpp)
Prints FILE:LINE: what, one a line, and exits 1 when it finds any.
"""
import os
import re
import sys

_CONST_JSON_DECL = re.compile(r"\bconst\s+(?:ckpt::)?(?:json::Json|Json|nlohmann::(?:ordered_)?json)\s*&?\s*([A-Za-z_]\w*)\s*[,;=)({]")


def strip_comments_and_strings(text):
    """The text with comments blanked and string/char literal contents replaced by 'S', keeping line breaks."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c == "R" and text.startswith('R"', i) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            open_paren = text.find("(", i + 2)
            delimiter = text[i + 2:open_paren]
            close = text.find(")" + delimiter + '"', open_paren)
            close = n if close < 0 else close
            body = text[open_paren + 1:close]
            out.append('"' + "".join("\n" if ch == "\n" else "" for ch in body) + 'S"')
            i = close + len(delimiter) + 2
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(c + "S" + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _closing_bracket(code, open_at):
    depth = 0
    for k in range(open_at, len(code)):
        if code[k] == "[":
            depth += 1
        elif code[k] == "]":
            depth -= 1
            if depth == 0:
                return k
    return len(code) - 1


def _is_assignment_target(code, open_at):
    """Whether the chain of subscripts starting at `open_at` is followed by `=` (not `==`)."""
    k = _closing_bracket(code, open_at) + 1
    while True:
        while k < len(code) and code[k] in " \t\n":
            k += 1
        if k < len(code) and code[k] == "[":
            k = _closing_bracket(code, k) + 1
            continue
        return code.startswith("=", k) and not code.startswith("==", k)


def violations(text):
    """(line, what) for each read of JSON that bypasses Fields in `text`, a C++ source."""
    code = strip_comments_and_strings(text)
    found = []

    def line_of(offset):
        return code.count("\n", 0, offset) + 1

    for m in re.finditer(r'\[\s*"S"\s*\]', code):
        if not _is_assignment_target(code, m.start()):
            found.append((line_of(m.start()), 'subscript by a string literal that is not an assignment target: read through json::Fields'))
    for name in sorted(set(_CONST_JSON_DECL.findall(code))):
        for m in re.finditer(r"(?<![\w.>:])" + re.escape(name) + r"\s*\[", code):
            found.append((line_of(m.start()), "'%s' is a const JSON value: read it through json::Fields, not operator[]" % name))
    for m in re.finditer(r'\.\s*(at|value)\s*\(\s*"S"', code):
        found.append((line_of(m.start()), ".%s(\"...\") reads JSON around json::Fields" % m.group(1)))
    return sorted(found)


def sources(paths):
    for path in paths:
        if os.path.isdir(path):
            for root, _, files in os.walk(path):
                for f in sorted(files):
                    if f.endswith((".cpp", ".hpp")):
                        yield os.path.join(root, f)
        else:
            yield path


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    failed = False
    for path in sources(argv[1:]):
        with open(path, encoding="utf-8") as f:
            for line, what in violations(f.read()):
                print("%s:%d: %s" % (path, line, what))
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
