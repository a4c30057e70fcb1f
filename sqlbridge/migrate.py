"""``sqlbridge migrate``: rewrite T-SQL that calls HTTP through OLE Automation.

A script that drives ``sp_OACreate 'WinHttp.WinHttpRequest.5.1'`` (or ``MSXML2.ServerXMLHTTP``)
through ``open`` / ``setRequestHeader`` / ``send`` / ``responseText`` / ``sp_OADestroy`` becomes
one call of a sqlbridge procedure: an Afilnet URL (``…afilnet.com/api/http/?class=…&method=…``)
the endpoint procedure of that class and method, any other URL
``sqlbridge.invoke_external_rest_endpoint`` (with ``@wait_ms`` when the script reads the answer).

The rewrite is deliberately conservative. It reads the script with a T-SQL tokenizer (strings,
comments, variables; never executed) and only rewrites a call whose every step it understands and
whose values it can follow; anything else stays exactly as written, with a
``-- sqlbridge migrate: left as is: <why>`` comment above it. Text that is not part of an sp_OA
call is never touched, except the assignments that only fed the rewritten call (the URL and the
Afilnet credentials, which must leave the script).
"""

from __future__ import annotations

import bisect
import difflib
import functools
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from . import registry

PREFIX = "-- sqlbridge migrate: "
LEFT_AS_IS = "left as is: "
# ProgIDs of the COM objects that speak HTTP.
HTTP_PROGID = re.compile(r"^(winhttp\.winhttprequest\.5\.1|msxml2\.(server)?xmlhttp(\.\d\.0)?|"
                         r"microsoft\.xmlhttp)$", re.IGNORECASE)
# Headers whose value is a secret: they go to a credential in the worker's account, never to a
# request row.
SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|passw", re.IGNORECASE)
WAIT_MS = 30000
OA_PROCEDURES = {"sp_oacreate", "sp_oamethod", "sp_oagetproperty", "sp_oasetproperty",
                 "sp_oadestroy", "sp_oageterrorinfo", "sp_oastop"}
AFILNET_CREDENTIALS = ("user", "password")
TYPE_WORDS = {
    "int", "bigint", "smallint", "tinyint", "bit", "varchar", "nvarchar", "char", "nchar",
    "text", "ntext", "decimal", "numeric", "float", "real", "money", "smallmoney", "date",
    "datetime", "datetime2", "smalldatetime", "datetimeoffset", "time", "uniqueidentifier",
    "xml", "varbinary", "binary", "sysname", "table", "cursor", "sql_variant", "image",
}
STATEMENT_WORDS = {
    "exec", "execute", "set", "select", "print", "return", "raiserror", "throw", "begin",
    "break", "continue", "insert", "update", "delete", "declare", "goto", "if", "while",
}


# -- tokens ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tok:
    kind: str  # ws, comment, str, var, word, qid, num, op
    start: int
    end: int
    value: str  # str: the literal's content; otherwise the text as written
    # The vendor's broken quoting '...?+'&class=' (not valid T-SQL), read as '...?&class='.
    typo: bool = False

    @property
    def low(self) -> str:
        return self.value.lower()


_TYPO_TAIL = re.compile(r"&[A-Za-z_]\w*=(?=')")


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>--[^\n]*)
  | (?P<block>/\*)
  | (?P<str>[Nn]?')
  | (?P<qid>\[(?:[^\]]|\]\])*\]?|"(?:[^"]|"")*"?)
  | (?P<var>@[\w@\#$]+)
  | (?P<word>[^\W\d_][\w@\#$]*|[_\#][\w@\#$]*)
  | (?P<num>\d(?:[^\W_]|\.)*)
  | (?P<op>.)
""", re.VERBOSE | re.DOTALL)


def lex(text: str) -> list[Tok]:
    """Every token of ``text``, covering it exactly; never raises (an unterminated string or
    comment runs to the end)."""
    out: list[Tok] = []
    i, n = 0, len(text)
    while i < n:
        m = _TOKEN.match(text, i)
        assert m is not None  # (?P<op>.) matches any character
        kind = m.lastgroup or "op"
        if kind == "block":
            depth, j = 1, i + 2
            while depth:
                close = text.find("*/", j)
                if close < 0:
                    j = n
                    break
                nested = text.find("/*", j, close + 1)  # "/*/": the opener comes first
                if nested >= 0:
                    depth, j = depth + 1, nested + 2
                else:
                    depth, j = depth - 1, close + 2
            out.append(Tok("comment", i, j, text[i:j]))
        elif kind == "str":
            j = m.end()
            buf: list[str] = []
            tail = ""  # the value's last two characters
            typo = False
            while True:
                quote = text.find("'", j)
                if quote < 0:
                    buf.append(text[j:])
                    j = n
                    break
                chunk = text[j:quote]
                buf.append(chunk)
                tail = (tail + chunk)[-2:]
                if text.startswith("''", quote):
                    buf.append("'")
                    tail = (tail + "'")[-2:]
                    j = quote + 2
                elif tail == "?+" and (typo_tail := _TYPO_TAIL.match(text, quote + 1)):
                    # The vendor's '...?+'&class=' read as '...?&class='.
                    value = "".join(buf)[:-1] + typo_tail.group()
                    buf, tail, typo = [value], value[-2:], True
                    j = typo_tail.end()
                else:
                    j = quote + 1
                    break
            out.append(Tok("str", i, j, "".join(buf), typo))
        else:
            j = m.end()
            out.append(Tok("comment" if kind == "comment" else kind, i, j, m.group()))
        i = j
    return out


# -- expressions ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lit:
    text: str
    typo: bool = False


@dataclass(frozen=True)
class Var:
    name: str


@dataclass(frozen=True)
class Opaque:
    """Anything else (a function call, a number): kept as written."""

    text: str
    variables: tuple[str, ...] = ()


Piece = Lit | Var | Opaque


def nlit(value: str) -> str:
    return "N'" + value.replace("'", "''") + "'"


class Refuse(Exception):  # noqa: N818 - a reason, not an error: the call stays as written
    """This call cannot be rewritten safely; the message says why."""


# -- the script ------------------------------------------------------------------------------------

@dataclass
class Arg:
    tok: Tok
    output: bool

    @property
    def kind(self) -> str:
        if self.tok.kind == "word" and self.tok.low in ("null", "default"):
            return "null"
        return self.tok.kind


@dataclass
class Call:
    """One ``EXEC [@rc =] sp_OAxxx arg, …`` statement."""

    proc: str  # lower case: sp_oacreate, sp_oamethod, …
    rc: str | None
    args: list[Arg]
    first: int  # index in Script.sig of the first token (IF, EXEC or the name)
    last: int  # index of the last token (the ; when there is one)
    simple_if: bool  # the statement is "IF @v <op> 0 EXEC sp_OA…"
    exec_at: int  # index of EXEC (or the name when there is no EXEC)

    def arg(self, i: int) -> Arg | None:
        return self.args[i] if i < len(self.args) else None


@dataclass
class Occurrence:
    at: int  # index in sig
    kind: str  # declare, assign, write, read
    expr_at: int | None = None  # sig index where the assigned expression starts


@dataclass
class Edit:
    start: int
    end: int
    text: str

    @functools.cached_property
    def code(self) -> bool:
        """Whether the replacement holds a statement (not only blanks and comments)."""
        return _has_code(self.text)


@dataclass
class Note:
    line: int
    text: str


@dataclass
class Migration:
    """What ``migrate`` made of one script."""

    original: str
    text: str
    rewritten: list[Note] = field(default_factory=list)
    left: list[Note] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.text != self.original

    def diff(self, name: str) -> str:
        return "".join(difflib.unified_diff(self.original.splitlines(keepends=True),
                                            self.text.splitlines(keepends=True),
                                            fromfile=name, tofile=name + " (migrated)"))


class Script:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = lex(text)
        self.sig = [t for t in self.toks if t.kind not in ("ws", "comment")]
        self.nl = "\r\n" if "\r\n" in text else "\n"
        self.line_starts = [0] + [m.end() for m in re.finditer(r"\n", text)]
        self.batch = self._batches()
        # Indexes, so that a large script costs time in proportion to its size.
        self.tok_starts = [t.start for t in self.toks]
        self.sig_starts = [t.start for t in self.sig]
        self.var_index: dict[tuple[str, int], list[int]] = {}
        self._occurrences: dict[tuple[str, int], list[Occurrence]] = {}
        for i, t in enumerate(self.sig):
            if t.kind == "var":
                self.var_index.setdefault((t.low, self.batch[i]), []).append(i)

    # positions
    def line(self, offset: int) -> int:
        return bisect.bisect_right(self.line_starts, offset)

    def line_start(self, offset: int) -> int:
        return self.line_starts[self.line(offset) - 1]

    def line_end(self, offset: int) -> int:
        """Offset just after the newline ending the line of ``offset`` (or the text's end)."""
        j = self.text.find("\n", offset)
        return len(self.text) if j < 0 else j + 1

    def indent(self, offset: int) -> str:
        start = self.line_start(offset)
        head = self.text[start:offset]
        # Spaces and tabs only: str.lstrip() also takes \x1f, \v, \f and Unicode spaces, which
        # would then be copied in front of every note and line migrate writes.
        return head[: len(head) - len(head.lstrip(" \t"))]

    def _batches(self) -> list[int]:
        batch, out = 0, []
        for t in self.sig:
            if t.kind == "word" and t.low == "go" and \
                    self.text[self.line_start(t.start):t.start].strip() == "":
                rest = self.text[t.end:self.line_end(t.start)]
                if re.fullmatch(r"[ \t]*\d*[ \t]*(--.*)?\r?\n?", rest):
                    batch += 1
            out.append(batch)
        return out

    def at(self, i: int) -> Tok | None:
        return self.sig[i] if 0 <= i < len(self.sig) else None

    def is_op(self, i: int, chars: str) -> bool:
        t = self.at(i)
        return t is not None and t.kind == "op" and t.value in chars

    def is_word(self, i: int, *words: str) -> bool:
        t = self.at(i)
        return t is not None and t.kind == "word" and t.low in words

    # sp_OA statements
    def calls(self) -> list[Call]:
        found = []
        for i, t in enumerate(self.sig):
            if t.kind == "word" and t.low in OA_PROCEDURES:
                call = self._call(i)
                if call is not None:
                    found.append(call)
        return found

    def _call(self, name_at: int) -> Call | None:
        j = name_at
        while self.is_op(j - 1, ".") and (self.at(j - 2) is None or
                                          self.at(j - 2).kind in ("word", "qid", "op")):  # type: ignore[union-attr]
            j -= 1  # master.dbo.sp_OACreate, master..sp_OACreate
            if self.is_op(j - 1, "."):
                continue
            j -= 1
        start = j
        rc = None
        if self.is_op(start - 1, "=") and (v := self.at(start - 2)) is not None \
                and v.kind == "var" and self.is_word(start - 3, "exec", "execute"):
            rc, start = v.value, start - 3
        elif self.is_word(start - 1, "exec", "execute"):
            start -= 1
        elif start > 0 and self.batch[start - 1] == self.batch[start] and \
                not self.is_word(start - 1, "go"):
            return None  # a mention (GRANT … ON sp_OACreate), not a call
        exec_at = start
        args: list[Arg] = []
        k = name_at + 1
        while True:
            t = self.at(k)
            if t is None or self.batch[k] != self.batch[name_at]:
                break
            if t.kind == "var" and self.is_op(k + 1, "="):  # @objecttoken = …
                k += 2
                t = self.at(k)
                if t is None:
                    break
            if t.kind in ("str", "var", "num") or (t.kind == "word" and
                                                    t.low in ("null", "default")):
                output = self.is_word(k + 1, "out", "output")
                args.append(Arg(t, output))
                k += 2 if output else 1
            elif t.kind == "op" and t.value == "-" and (u := self.at(k + 1)) is not None \
                    and u.kind == "num":
                args.append(Arg(Tok("num", t.start, u.end, "-" + u.value), False))
                k += 2
            else:
                break
            if not self.is_op(k, ","):
                break
            k += 1
        last = k - 1
        if self.is_op(k, ";"):
            last = k
        first, simple_if = self._simple_if(start)
        return Call(self.sig[name_at].low.split(".")[-1], rc, args, first, last, simple_if,
                    exec_at)

    def _simple_if(self, start: int) -> tuple[int, bool]:
        """``IF @hr <> 0`` (or ``IS [NOT] NULL``, any comparison with a number or NULL) right
        before the statement: the whole IF is the statement."""
        j = start - 1
        t = self.at(j)
        if t is None:
            return start, False
        if self.is_word(j, "null") and self.is_word(j - 1, "is", "not"):
            j -= 1
            if self.is_word(j, "not"):
                j -= 1
            if not self.is_word(j, "is"):
                return start, False
            j -= 1
        else:
            if t.kind == "num" or self.is_word(j, "null"):
                j -= 1
                if self.is_op(j, "-"):
                    j -= 1
            else:
                return start, False
            ops = 0
            while self.is_op(j, "<>=!") and ops < 2:
                j, ops = j - 1, ops + 1
            if ops == 0:
                return start, False
        v = self.at(j)
        if v is None or v.kind != "var" or not self.is_word(j - 1, "if"):
            return start, False
        return j - 1, True

    def dangling(self, first: int) -> bool:
        """Whether the statement at ``first`` is the body of an IF / WHILE / ELSE written on an
        earlier line (removing it would give that header another statement as body)."""
        if self.is_word(first - 1, "else"):
            return True
        prev = self.at(first - 1)
        if prev is None or self.batch[first - 1] != self.batch[first]:
            return False
        line = self.line(prev.start)
        i = first - 1
        while i - 1 >= 0 and self.line(self.sig[i - 1].start) == line:
            i -= 1
        if not self.is_word(i, "if", "while"):
            return False
        return not any(self.sig[k].kind == "word" and self.sig[k].low in STATEMENT_WORDS
                       for k in range(i + 1, first))

    # variables
    def occurrences(self, name: str, batch: int) -> list[Occurrence]:
        key = (name.lower(), batch)
        cached = self._occurrences.get(key)
        if cached is None:
            cached = [self._occurrence(i) for i in self.var_index.get(key, [])]
            self._occurrences[key] = cached
        return cached

    def _occurrence(self, i: int) -> Occurrence:
        nxt = self.at(i + 1)
        if nxt is not None and (nxt.kind == "word" and nxt.low in TYPE_WORDS or
                                self.is_word(i + 1, "as") and self.is_word(i + 2, *TYPE_WORDS)):
            k = i + (2 if self.is_word(i + 1, "as") else 1) + 1
            if self.is_op(k, "("):
                while self.at(k) is not None and not self.is_op(k, ")"):
                    k += 1
                k += 1
            if self.is_op(k, "=") and not self.is_op(k + 1, "="):
                return Occurrence(i, "declare", k + 1)
            return Occurrence(i, "declare")
        if self.is_word(i - 1, "set") and self.is_op(i + 1, "=") and \
                not self.is_op(i + 2, "="):
            return Occurrence(i, "assign", i + 2)
        if self.is_word(i + 1, "out", "output") or self.is_word(i - 1, "into") or \
                (self.is_op(i + 1, "=") and (self.is_word(i - 1, "exec", "execute", "select",
                                                         "set") or self.is_op(i - 1, ","))) or \
                (self.is_op(i + 1, "+-*/%&|^") and self.is_op(i + 2, "=")):
            return Occurrence(i, "write")
        return Occurrence(i, "read")

    def expression(self, i: int) -> tuple[list[Piece], int]:
        """The concatenation starting at sig ``i``: its pieces and the index of its last token."""
        pieces: list[Piece] = []
        while True:
            t = self.at(i)
            if t is None:
                raise Refuse("an expression ends abruptly")
            if t.kind == "str":
                pieces.append(Lit(t.value, t.typo))
                end = i
            elif t.kind == "var":
                pieces.append(Var(t.value))
                end = i
            elif t.kind == "num":
                pieces.append(Opaque(t.value))
                end = i
            elif (t.kind == "word" and self.is_op(i + 1, "(")) or self.is_op(i, "("):
                k = i + 1 if self.is_op(i, "(") else i + 2
                depth = 1
                while depth:
                    u = self.at(k)
                    if u is None:
                        raise Refuse("unbalanced parentheses")
                    if u.kind == "op" and u.value == "(":
                        depth += 1
                    elif u.kind == "op" and u.value == ")":
                        depth -= 1
                    k += 1
                end = k - 1
                names = tuple(self.sig[m].value for m in range(i, k) if self.sig[m].kind == "var")
                pieces.append(Opaque(self.text[t.start:self.sig[end].end], names))
            else:
                raise Refuse(f"cannot follow the expression at '{t.value[:40]}'")
            if self.is_op(end + 1, "+"):
                i = end + 2
                continue
            return pieces, end


# -- one call ------------------------------------------------------------------------------------

@dataclass
class Group:
    create: Call
    handle: str
    progid: str
    members: list[Call]  # every call on the handle, create first
    batch: int


@dataclass
class Plan:
    edits: list[Edit]
    summary: str
    notes: list[str]  # for the reader of the report (the script has them as comments too)


def _value(arg: Arg | None) -> str | None:
    return None if arg is None else arg.tok.value


class Rewriter:
    def __init__(self, script: Script) -> None:
        self.s = script
        self.used_names = {t.low for t in script.sig if t.kind == "var"}
        self._assignments: dict[tuple[str, int], tuple[list[Occurrence], list[Occurrence]]] = {}

    def fresh(self, base: str) -> str:
        name, n = f"@sqlbridge_{base}", 1
        while name.lower() in self.used_names:
            n += 1
            name = f"@sqlbridge_{base}_{n}"
        self.used_names.add(name.lower())
        return name

    # what a variable holds
    def single_assignment(self, name: str, batch: int, before: int) -> Occurrence:
        key = (name.lower(), batch)
        if key not in self._assignments:
            occ = self.s.occurrences(name, batch)
            self._assignments[key] = ([o for o in occ if o.kind == "write"],
                                      [o for o in occ if o.expr_at is not None])
        writes, assigns = self._assignments[key]
        if writes:
            raise Refuse(f"{name} is changed in a way this tool does not follow "
                         f"(line {self.s.line(self.s.sig[writes[0].at].start)})")
        if len(assigns) != 1 or assigns[0].at > before:
            raise Refuse(f"{name} is not assigned exactly once before the call")
        return assigns[0]

    def constant(self, name: str, batch: int, before: int) -> str | None:
        try:
            occ = self.single_assignment(name, batch, before)
            pieces, _ = self.s.expression(occ.expr_at)  # type: ignore[arg-type]
        except Refuse:
            return None
        if len(pieces) == 1 and isinstance(pieces[0], Lit):
            return pieces[0].text
        return None

    def const_arg(self, arg: Arg | None, batch: int, before: int, what: str) -> str:
        if arg is not None and arg.kind in ("str", "num"):
            return arg.tok.value
        if arg is not None and arg.kind == "var":
            value = self.constant(arg.tok.value, batch, before)
            if value is not None:
                return value
        raise Refuse(f"{what} is not a constant")

    def check_unchanged(self, names: Iterable[str], batch: int, after: int, until: int) -> None:
        for name in names:
            occ = self.s.occurrences(name, batch)
            first = bisect.bisect_right(self.s.var_index.get((name.lower(), batch), []), after)
            for o in occ[first:]:
                if o.at >= until:
                    break
                if o.kind in ("assign", "write", "declare"):
                    raise Refuse(f"{name} changes between building the request and sending it")

    # the group
    def plan(self, g: Group) -> Plan:
        s = self.s
        by = {c.proc: [m for m in g.members if m.proc == c.proc] for c in g.members}
        methods: list[tuple[str, Call]] = []
        props: list[tuple[str, Call]] = []
        for c in g.members[1:]:
            if c.proc == "sp_oamethod":
                name = _value(c.arg(1))
                if c.arg(1) is None or c.arg(1).kind != "str":  # type: ignore[union-attr]
                    raise Refuse("a method name that is not a literal")
                methods.append((str(name).lower(), c))
            elif c.proc == "sp_oagetproperty":
                if c.arg(1) is None or c.arg(1).kind != "str":  # type: ignore[union-attr]
                    raise Refuse("a property name that is not a literal")
                props.append((str(_value(c.arg(1))).lower(), c))
            elif c.proc not in ("sp_oadestroy", "sp_oageterrorinfo"):
                raise Refuse(f"{c.proc} is not part of a plain HTTP call")
        if len(by.get("sp_oadestroy", [])) > 1:
            raise Refuse("the object is destroyed more than once")
        names = [m for m, _ in methods]
        for m in names:
            if m not in ("open", "setrequestheader", "send", "settimeouts", "waitforresponse"):
                raise Refuse(f"method '{m}' is not one this tool rewrites")
        if names.count("open") != 1 or names.count("send") != 1:
            raise Refuse("the object is not opened and sent exactly once")
        open_call = next(c for m, c in methods if m == "open")
        send = next(c for m, c in methods if m == "send")
        if send.first < open_call.first:
            raise Refuse("send comes before open")
        for p, c in props:
            if p not in ("responsetext", "status", "statustext"):
                raise Refuse(f"property '{p}' is not one this tool rewrites")
            if c.first < send.first:
                raise Refuse(f"property '{p}' is read before send")
            target = c.arg(2)
            if target is None or target.kind != "var" or not target.output:
                raise Refuse(f"property '{p}' is not read into a variable")
        for c in g.members:
            if c.proc == "sp_oageterrorinfo":
                continue  # replaced by one statement, or removed with its IF
            if c.simple_if and c.proc != "sp_oadestroy":
                raise Refuse(f"{c.proc} runs under an IF")
            if s.dangling(c.first):
                raise Refuse(f"{c.proc} (line {s.line(s.sig[c.first].start)}) is the body of "
                             "an IF, WHILE or ELSE")
        batch = g.batch
        open_at = open_call.first
        http_method = self.const_arg(open_call.arg(3), batch, open_at, "the HTTP method").upper()
        if http_method not in registry.HTTP_METHODS:
            raise Refuse(f"HTTP method '{http_method[:20]}' is not one of "
                         f"{', '.join(registry.HTTP_METHODS)}")
        if open_call.arg(6) is not None and open_call.arg(6).kind != "null":  # type: ignore[union-attr]
            raise Refuse("open() passes a user and password: put them in a credential "
                         "(docs/migration.md) and rewrite this call by hand")
        url_arg = open_call.arg(4)
        if url_arg is None or url_arg.kind not in ("str", "var"):
            raise Refuse("the URL is not a literal or a variable")
        url_pieces: list[Piece] | None
        url_assign: Occurrence | None = None
        if url_arg.kind == "str":
            url_pieces = [Lit(url_arg.tok.value, url_arg.tok.typo)]
        else:
            try:
                url_assign = self.single_assignment(url_arg.tok.value, batch, open_at)
                url_pieces, _ = s.expression(url_assign.expr_at)  # type: ignore[arg-type]
            except Refuse:
                url_pieces = None
        return (self.afilnet(g, open_call, send, props, methods, url_arg, url_pieces, url_assign,
                             http_method)
                or self.generic(g, open_call, send, props, methods, url_arg, url_pieces,
                                http_method))

    def afilnet(self, g: Group, open_call: Call, send: Call, props: list[tuple[str, Call]],
                methods: list[tuple[str, Call]], url_arg: Arg, pieces: list[Piece] | None,
                url_assign: Occurrence | None, http_method: str) -> Plan | None:
        s = self.s
        if pieces is None:
            if "afilnet" in s.text.lower():
                raise Refuse(f"the URL in {url_arg.tok.value} cannot be followed, and this "
                             "script mentions Afilnet: its credentials must not reach a "
                             "request row")
            return None
        flat = _flatten(pieces)
        try:
            q = next(i for i, p in enumerate(flat) if p == "?")
        except StopIteration:
            return None
        base = flat[:q]
        if not all(isinstance(p, str) for p in base):
            if any(isinstance(p, str) and "afilnet" in p.lower() for p in flat):
                raise Refuse("the Afilnet URL's address is not a constant")
            return None
        parts = urlsplit("".join(base))  # type: ignore[arg-type]
        host = (parts.hostname or "").lower()
        if not (host == "afilnet.com" or host.endswith(".afilnet.com")):
            return None
        if not parts.path.startswith("/api/http"):
            raise Refuse(f"Afilnet API style '{parts.path}' is not the HTTP GET/POST one")
        batch = g.batch
        fields = _query(flat[q + 1:])
        if http_method == "POST" and send.arg(3) is not None:
            body = send.arg(3)
            if body.kind == "str":  # type: ignore[union-attr]
                fields += _query(_flatten([Lit(body.tok.value)]))  # type: ignore[union-attr]
            else:
                raise Refuse("the Afilnet POST body is not a literal")
        elif send.arg(3) is not None and send.arg(3).kind != "null":  # type: ignore[union-attr]
            raise Refuse("a GET request with a body")
        seen: dict[str, list[Piece]] = {}
        for key, value in fields:
            if key in seen:
                raise Refuse(f"parameter '{key}' appears twice in the URL")
            seen[key] = value
        typo = any(isinstance(p, Lit) and p.typo for p in pieces)

        def const(key: str) -> str:
            value = seen.get(key)
            if value is None:
                raise Refuse(f"the Afilnet URL has no {key}=")
            if len(value) == 1 and isinstance(value[0], Lit):
                return unquote_plus(value[0].text)
            if len(value) == 1 and isinstance(value[0], Var):
                known = self.constant(value[0].name, batch, open_call.first)
                if known is not None:
                    return unquote_plus(known)
            raise Refuse(f"the Afilnet {key} is not a constant")

        name = f"{const('class')}.{const('method')}".lower()
        op = registry.OPERATIONS.get(name)
        if op is not None and op.provider != "afilnet":
            op = None
        if op is None and not re.fullmatch(r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*", name):
            raise Refuse(f"'{name[:60]}' is not an Afilnet class.method")
        notes: list[str] = []
        values: list[tuple[str, str]] = []  # (parameter, T-SQL value)
        pre: list[str] = []  # statements before the EXEC
        variables: set[str] = set()
        encoded_note = False
        for key, value in seen.items():
            if key in ("class", "method") or key in AFILNET_CREDENTIALS:
                continue
            if op is not None and op.param(key) is None:
                raise Refuse(f"parameter '{key[:40]}' is not one {name} takes "
                             f"({', '.join(p.name for p in op.params) or 'none'})")
            if op is None and not re.fullmatch(r"[a-z][a-z0-9_]*", key, re.IGNORECASE):
                raise Refuse(f"parameter '{key[:40]}' is not a plain name")
            rendered, encoded = self.render_value(key, value, batch, open_call.first, pre,
                                                  variables)
            encoded_note = encoded_note or encoded
            values.append((key, rendered))
        self.check_unchanged(variables, batch, url_assign.at if url_assign else open_call.first,
                             send.first)
        if encoded_note:
            notes.append("values are sent as they are now, not URL-encoded: a variable that "
                         "held '+' for spaces or %XX escapes must hold the plain text")
        notes.append("the Afilnet user and password are no longer in this script: set them "
                     "in the worker's account ([accounts.default.afilnet] user and password, "
                     "or SQLBRIDGE_AFILNET_USER / SQLBRIDGE_AFILNET_PASSWORD)")
        comments = list(notes)
        if typo:
            line = s.line(s.sig[url_assign.at].start) if url_assign else s.line(
                url_arg.tok.start)
            comments.append(f"line {line} of the original is not valid T-SQL (the quote after "
                            "'?+' closes the string too early); it was read as the URL it "
                            "clearly meant")
        if op is not None:
            proc = f"sqlbridge.{op.procedure}"
            args = [(f"@{k}", v) for k, v in values]
        else:
            proc = "sqlbridge.afilnet_call"
            cls, method = name.split(".")
            args = [("@class", nlit(cls)), ("@method", nlit(method))]
            args.append(("@params", self.params_json(values, pre)))
        sync = any(p == "responsetext" or p == "status" for p, _ in props)
        request_id = None
        if sync or any(c.proc == "sp_oageterrorinfo" and not self._removable_check(c, g)
                       for c in g.members):
            request_id = self.fresh("request_id")
            args.append(("@request_id", f"{request_id} OUTPUT"))
        edits = self.common_edits(g, send, pre, proc, args, request_id, comments)
        for p, c in props:
            target = c.arg(2).tok.value  # type: ignore[union-attr]
            if p == "responsetext":
                stmts = [f"EXEC {f'{c.rc} = ' if c.rc else ''}sqlbridge.wait_for "
                         f"@request_id = {request_id}, @timeout_ms = {WAIT_MS};",
                         f"SELECT {target} = response FROM sqlbridge.request_results "
                         f"WHERE id = {request_id};"]
            elif p == "status":
                stmts = [f"SELECT {target} = http_status FROM sqlbridge.request_results "
                         f"WHERE id = {request_id};"]
            else:
                raise Refuse("statusText is not kept for Afilnet calls")
            edits.append(self.replace(c, stmts))
        edits += self.drop_url(g, url_assign, url_arg, open_call, seen)
        return Plan(edits, f"{name} -> {proc}", notes)

    def render_value(self, key: str, value: list[Piece], batch: int, before: int,
                     pre: list[str], variables: set[str]) -> tuple[str, bool]:
        """The T-SQL value for an Afilnet parameter read from the query string (decoded the way
        the server decoded it), and whether a variable's encoding is now the caller's job."""
        if not value:
            return "N''", False
        if all(isinstance(p, Lit) for p in value):
            return nlit(unquote_plus("".join(p.text for p in value))), False  # type: ignore[union-attr]
        if len(value) == 1 and isinstance(value[0], Var):
            known = self.constant(value[0].name, batch, before)
            if known is not None and unquote_plus(known) != known:
                return nlit(unquote_plus(known)), False
            variables.add(value[0].name)
            return value[0].name, known is None
        parts = []
        encoded = False
        for p in value:
            if isinstance(p, Lit):
                parts.append(nlit(unquote_plus(p.text)))
            elif isinstance(p, Var):
                known = self.constant(p.name, batch, before)
                if known is not None and unquote_plus(known) != known:
                    parts.append(nlit(unquote_plus(known)))
                else:
                    encoded = encoded or known is None
                    variables.add(p.name)
                    parts.append(p.name)
            else:
                variables.update(p.variables)
                encoded = True
                parts.append(p.text)
        helper = self.fresh(re.sub(r"\W", "_", key)[:40])
        pre.append(f"DECLARE {helper} NVARCHAR(MAX) = {' + '.join(parts)};")
        return helper, encoded

    def params_json(self, values: list[tuple[str, str]], pre: list[str]) -> str:
        if all(v.startswith("N'") for _, v in values):
            obj = {k: _unlit(v) for k, v in values}
            return nlit(json.dumps(obj, ensure_ascii=False))
        helper = self.fresh("params")
        pre.append(f"DECLARE {helper} NVARCHAR(MAX) = N'{{}}';")
        pre += [f"SET {helper} = JSON_MODIFY({helper}, {nlit('$.' + k)}, {v});"
                for k, v in values]
        return helper

    def generic(self, g: Group, open_call: Call, send: Call, props: list[tuple[str, Call]],
                methods: list[tuple[str, Call]], url_arg: Arg, pieces: list[Piece] | None,
                http_method: str) -> Plan:
        batch = g.batch
        secret_query: list[str] = []
        if url_arg.kind == "str":
            url = url_arg.tok.value
            parts = urlsplit(url)
            if parts.username or parts.password:
                raise Refuse("the URL holds a user and password: put them in a credential")
            url, secret_query = _without_secret_query(url)
            url_value = nlit(url)
        else:
            url_value = url_arg.tok.value
            flat = _flatten(pieces) if pieces else []
            if "?" in flat:
                try:
                    keys = [k for k, _ in _query(flat[flat.index("?") + 1:])]
                except Refuse:
                    keys = []
                if any(SECRET_HEADER.search(k) for k in keys):
                    raise Refuse(f"the URL in {url_arg.tok.value} carries a secret in its query "
                                 "string: a request row must not hold it; put it in a "
                                 "credential (query = {...}) and rewrite this call by hand")
        host = ""
        if pieces and isinstance(pieces[0], Lit):
            host = (urlsplit(pieces[0].text).hostname or "").lower()
        variables: set[str] = {url_arg.tok.value} if url_arg.kind == "var" else set()
        headers: list[tuple[str, Arg]] = []
        secret: dict[str, str] = {}
        timeout: int | None = None
        for m, c in methods:
            if m == "setrequestheader":
                hname = self.const_arg(c.arg(3), batch, c.first, "a header name")
                val = c.arg(4)
                if val is None or val.kind not in ("str", "var", "num"):
                    raise Refuse(f"header '{hname[:40]}' has no value this tool can follow")
                if SECRET_HEADER.search(hname):
                    if val.kind == "var" and self.constant(val.tok.value, batch,
                                                           c.first) is None:
                        raise Refuse(f"header '{hname[:40]}' carries a secret from "
                                     f"{val.tok.value}: a request row must not hold it; put "
                                     "it in a credential and rewrite this call by hand")
                    secret[hname] = self.const_arg(val, batch, c.first, hname)
                    continue
                headers.append((hname, val))
                if val.kind == "var":
                    variables.add(val.tok.value)
            elif m == "settimeouts":
                receive = self.const_arg(c.arg(6), batch, c.first, "the receive timeout")
                try:
                    timeout = min(230, max(1, math.ceil(int(receive) / 1000)))
                except ValueError:
                    raise Refuse("the receive timeout is not a number") from None
        body = send.arg(3)
        payload = None
        if body is not None and body.kind == "str":
            payload = nlit(body.tok.value)
        elif body is not None and body.kind == "var":
            payload = body.tok.value
            variables.add(body.tok.value)
        elif body is not None and body.kind != "null":
            raise Refuse("the body sent is not a literal or a variable")
        self.check_unchanged(variables, batch, open_call.first, send.first)
        pre: list[str] = []
        args: list[tuple[str, str]] = [("@url", url_value), ("@method", nlit(http_method))]
        if headers:
            args.append(("@headers", self.headers_json(headers, batch, pre)))
        if payload is not None:
            args.append(("@payload", payload))
        if timeout is not None:
            args.append(("@timeout", str(timeout)))
        notes: list[str] = []
        if secret or secret_query:
            cred = re.sub(r"[^a-z0-9]+", "_", host or "api").strip("_")[:100] or "api"
            args.append(("@credential", nlit(cred)))
            tables = [f"{part} = {{ " + ", ".join(f'"{k}" = "…"' for k in names) + " }"
                      for part, names in (("headers", list(secret)), ("query", secret_query))
                      if names]
            notes.append(f"{', '.join([*secret, *secret_query])} left the script: put "
                         f"{'it' if len(secret) + len(secret_query) == 1 else 'them'} in the "
                         f"worker's config as [accounts.default.http.credentials.{cred}] "
                         + " and ".join(tables))
        notes.append(f"the worker calls the URL only if its host is in "
                     f"accounts.default.http.allowed_hosts{f' ({host})' if host else ''}")
        sync = bool(props)
        response = None
        if sync:
            response = self.fresh("response")
            args.append(("@wait_ms", str(WAIT_MS if timeout is None
                                         else max(WAIT_MS, timeout * 1000 + 5000))))
            args.append(("@response", f"{response} OUTPUT"))
        request_id = None
        if any(c.proc == "sp_oageterrorinfo" and not self._removable_check(c, g)
               for c in g.members):
            request_id = self.fresh("request_id")
            args.append(("@request_id", f"{request_id} OUTPUT"))
        edits = self.common_edits(g, send, pre, "sqlbridge.invoke_external_rest_endpoint", args,
                                  request_id, notes, response=response)
        paths = {"responsetext": None, "status": "$.response.status.http.code",
                 "statustext": "$.response.status.http.description"}
        for p, c in props:
            target = c.arg(2).tok.value  # type: ignore[union-attr]
            path = paths[p]
            if path is None:
                expr = (f"COALESCE(JSON_QUERY({response}, N'$.result'), "
                        f"JSON_VALUE({response}, N'$.result'))")
            else:
                expr = f"JSON_VALUE({response}, N'{path}')"
            edits.append(self.replace(c, [f"SET {target} = {expr};"]))
        return Plan(edits, f"{http_method} {host or url_value[:60]} -> "
                           "sqlbridge.invoke_external_rest_endpoint", notes)

    def headers_json(self, headers: list[tuple[str, Arg]], batch: int, pre: list[str]) -> str:
        if all(a.kind in ("str", "num") for _, a in headers):
            return nlit(json.dumps({k: a.tok.value for k, a in headers}, ensure_ascii=False))
        helper = self.fresh("headers")
        const = {k: a.tok.value for k, a in headers if a.kind != "var"}
        pre.append(f"DECLARE {helper} NVARCHAR(MAX) = "
                   f"{nlit(json.dumps(const, ensure_ascii=False))};")
        for k, a in headers:
            if a.kind == "var":
                path = "$." + json.dumps(k, ensure_ascii=False)
                pre.append(f"SET {helper} = JSON_MODIFY({helper}, {nlit(path)}, {a.tok.value});")
        return helper

    # edits shared by both kinds
    def _removable_check(self, c: Call, g: Group) -> bool:
        """Whether an sp_OAGetErrorInfo can simply go: ``IF @hr <> 0 EXEC sp_OAGetErrorInfo``
        right after a statement of the same call that is removed (not the send or a read)."""
        if not c.simple_if or self.s.dangling(c.first):
            return False
        i = g.members.index(c)
        if i == 0:
            return False
        prev = g.members[i - 1]
        if prev.proc == "sp_oageterrorinfo":
            return self._removable_check(prev, g)
        kept = prev.proc == "sp_oagetproperty" or (
            prev.proc == "sp_oamethod" and str(_value(prev.arg(1))).lower() == "send")
        return not kept and prev.last + 1 == c.first

    def common_edits(self, g: Group, send: Call, pre: list[str], proc: str,
                     args: list[tuple[str, str]], request_id: str | None, notes: list[str],
                     response: str | None = None) -> list[Edit]:
        s = self.s
        edits: list[Edit] = []
        header = [f"{PREFIX}was sp_OACreate '{g.progid}' (line "
                  f"{s.line(s.sig[g.create.first].start)}); now queued for the sqlbridge worker"]
        header += [PREFIX + n for n in notes]
        declares = []
        if request_id:
            declares.append(f"DECLARE {request_id} BIGINT;")
        if response:
            declares.append(f"DECLARE {response} NVARCHAR(MAX);")
        edits.append(self.replace(g.create, [_comment(h) for h in header] + declares))
        rc = f"{send.rc} = " if send.rc else ""
        edits.append(self.replace(send, pre + [_exec(f"EXEC {rc}{proc}", args)]))
        for c in g.members[1:]:
            if c is send or c.proc == "sp_oagetproperty":
                continue
            if c.proc == "sp_oageterrorinfo":
                if self._removable_check(c, g):
                    edits.append(self.replace(c, []))
                else:
                    edits.append(self.error_info(c, request_id))
                continue
            edits.append(self.replace(c, []))
        return edits

    def error_info(self, c: Call, request_id: str | None) -> Edit:
        """sp_OAGetErrorInfo becomes a read of the request's error: a result set, like the
        original, or its source / description OUTPUT variables."""
        if request_id is None:
            raise Refuse("sp_OAGetErrorInfo cannot be placed")
        outs = [a.tok.value for a in c.args[1:3] if a.kind == "var" and a.output]
        columns = ["error_code", "error_message"]
        if outs:
            select = ", ".join(f"{v} = {col}" for v, col in zip(outs, columns, strict=False))
        else:
            select = ", ".join(columns)
        stmt = f"SELECT {select} FROM sqlbridge.request_results WHERE id = {request_id};"
        s = self.s
        start = s.sig[c.exec_at].start
        end = s.sig[c.last].end
        return Edit(start, end, stmt)

    def replace(self, c: Call, lines: list[str]) -> Edit:
        s = self.s
        return self.replace_span(s.sig[c.first].start, s.sig[c.last].end, lines)

    def replace_span(self, start: int, end: int, lines: list[str]) -> Edit:
        s = self.s
        text = s.text
        ls = s.line_start(start)
        le = s.line_end(end) if end > 0 else 0
        after = text[end:le].rstrip("\r\n")
        indent = s.indent(start)
        lines = [part for line in lines for part in line.split("\n")]
        if text[ls:start].strip() == "" and after.strip() == "":
            body = "".join(indent + line + s.nl for line in lines)
            if le == len(text) and not text.endswith("\n") and body:
                body = body[: -len(s.nl)]
            return Edit(ls, le, body)
        joined = (s.nl + indent).join(lines)
        if lines and lines[-1].lstrip().startswith("--"):
            joined += s.nl + indent  # the rest of the line must not become part of a comment
        return Edit(start, end, joined)

    def drop_url(self, g: Group, url_assign: Occurrence | None, url_arg: Arg,
                 open_call: Call, seen: dict[str, list[Piece]]) -> list[Edit]:
        """Remove the URL's assignment and the variables only it used for class, method and
        the credentials, so no password is left in the script."""
        s = self.s
        edits: list[Edit] = []
        consumed = {p.name.lower() for k in ("class", "method", *AFILNET_CREDENTIALS)
                    for p in seen.get(k, []) if isinstance(p, Var)}
        creds = {p.name.lower() for k in AFILNET_CREDENTIALS
                 for p in seen.get(k, []) if isinstance(p, Var)}
        if url_assign is None:
            return edits  # a literal URL: it goes with the open call
        name = url_arg.tok.value
        reads = [o for o in s.occurrences(name, g.batch)
                 if o.kind == "read" and o.at != open_call.first and
                 not (open_call.first <= o.at <= open_call.last)]
        span = self.statement_span(url_assign)
        if reads or span is None or s.dangling(span[2]):
            leftover = ", ".join(sorted(creds)) or "the URL"
            edits.append(self.note_before(self.statement_start(url_assign.at),
                                          f"{name} is still assigned here with the Afilnet "
                                          f"credentials ({leftover}): remove them by hand"))
            return edits
        start, end, _ = span
        edits.append(self.replace_span(start, end, []))
        for var in sorted(consumed):
            occ = s.occurrences(var, g.batch)
            outside = [o for o in occ
                       if o.kind != "declare" and not start <= s.sig[o.at].start < end]
            decl = [o for o in occ if o.kind == "declare"]
            vspan = self.statement_span(decl[0]) if len(decl) == 1 else None
            if outside or vspan is None or s.dangling(vspan[2]):
                if var in creds:
                    edits.append(self.note_before(self.statement_start(occ[0].at),
                                                  f"{var} still holds an Afilnet credential: "
                                                  "remove it by hand"))
                continue
            edits.append(self.replace_span(vspan[0], vspan[1], []))
        return edits

    def statement_span(self, occ: Occurrence) -> tuple[int, int, int] | None:
        """(start, end, first sig index) of ``DECLARE @v type = expr`` or ``SET @v = expr``
        when that statement holds nothing else."""
        s = self.s
        if occ.kind == "declare":
            if not s.is_word(occ.at - 1, "declare"):
                return None
            first = occ.at - 1
        elif occ.kind == "assign":
            first = occ.at - 1
        else:
            return None
        if occ.expr_at is None:
            last = occ.at
            while s.at(last + 1) is not None and not s.is_op(last + 1, ",;") and \
                    s.line(s.sig[last + 1].start) == s.line(s.sig[occ.at].start):
                last += 1
        else:
            try:
                _, last = s.expression(occ.expr_at)
            except Refuse:
                return None
        if s.is_op(last + 1, ","):
            return None
        if s.is_op(last + 1, ";"):
            last += 1
        return s.sig[first].start, s.sig[last].end, first

    def statement_start(self, at: int) -> int:
        """Offset of the DECLARE / SET in front of the variable at sig ``at``, if any."""
        s = self.s
        return s.sig[at - 1].start if s.is_word(at - 1, "declare", "set") else s.sig[at].start

    def note_before(self, offset: int, why: str) -> Edit:
        s = self.s
        ls = s.line_start(offset)
        comment = _comment(PREFIX + why)
        if s.text[ls:offset].strip() == "" and self._starts_code(ls):
            return Edit(ls, ls, s.indent(offset) + comment + s.nl)
        return Edit(offset, offset, comment + s.nl)

    def _starts_code(self, offset: int) -> bool:
        """Whether ``offset`` is a token boundary outside strings and comments."""
        i = bisect.bisect_right(self.s.tok_starts, offset) - 1
        if i < 0 or offset >= self.s.toks[i].end:
            return True
        return self.s.toks[i].kind == "ws" or self.s.toks[i].start == offset


def _comment(text: str) -> str:
    return re.sub(r"[\r\n\u2028\u2029\x0b\x0c\x85]+", " ", text)


def _unlit(value: str) -> str:
    return value[2:-1].replace("''", "'")


def _exec(head: str, args: list[tuple[str, str]], width: int = 92) -> str:
    """``EXEC proc @a = x, @b = y;`` wrapped at ``width`` with four-space continuation lines."""
    lines = [head]
    for i, (name, value) in enumerate(args):
        piece = f"{name} = {value}" + ("," if i < len(args) - 1 else ";")
        if len(lines[-1]) + 1 + len(piece) > width and lines[-1].strip() != head:
            lines.append("    " + piece)
        else:
            lines[-1] += " " + piece
    if not args:
        lines[-1] += ";"
    return "\n".join(lines)


def _without_secret_query(url: str) -> tuple[str, list[str]]:
    """The URL without the query-string parameters whose name says they are secrets (they go
    to a credential's ``query``), and those names. Other parameters keep their exact text."""
    base, sep, rest = url.partition("?")
    if not sep:
        return url, []
    query, hash_, fragment = rest.partition("#")
    kept, secret = [], []
    for part in query.split("&"):
        name = unquote_plus(part.split("=", 1)[0])
        if part and SECRET_HEADER.search(name):
            secret.append(name)
        else:
            kept.append(part)
    if not secret:
        return url, []
    rebuilt = base + ("?" + "&".join(kept) if any(kept) else "")
    return rebuilt + hash_ + fragment, secret


def _flatten(pieces: list[Piece]) -> list[str | Var | Opaque]:
    """Literal text as single characters, variables and opaque pieces as items."""
    out: list[str | Var | Opaque] = []
    for p in pieces:
        if isinstance(p, Lit):
            out.extend(p.text)
        else:
            out.append(p)
    return out


def _query(flat: list[str | Var | Opaque]) -> list[tuple[str, list[Piece]]]:
    """``key=value&…`` over flattened pieces: keys must be literal, values may hold variables."""
    fields: list[tuple[str, list[Piece]]] = []
    segment: list[str | Var | Opaque] = []
    if "#" in flat:  # a fragment is not sent
        flat = flat[:flat.index("#")]
    for item in [*flat, "&"]:
        if item != "&":
            segment.append(item)
            continue
        if segment:
            try:
                eq = segment.index("=")
            except ValueError:
                raise Refuse("a query-string part without '='") from None
            key = segment[:eq]
            if not all(isinstance(k, str) for k in key):
                raise Refuse("a query-string name is not a constant")
            value: list[Piece] = []
            for v in segment[eq + 1:]:
                if isinstance(v, str):
                    if value and isinstance(value[-1], Lit):
                        value[-1] = Lit(value[-1].text + v)
                    else:
                        value.append(Lit(v))
                else:
                    value.append(v)
            fields.append((unquote_plus("".join(key)), value))  # type: ignore[arg-type]
        segment = []
    return fields


# -- the whole script ----------------------------------------------------------------------------

def migrate(text: str) -> Migration:
    """Rewrite every sp_OA HTTP call of ``text`` it can; never raises."""
    if "sp_oa" not in text.lower():
        return Migration(text, text)
    s = Script(text)
    result = Migration(text, text)
    typos = sorted({s.line(t.start) for t in s.toks if t.kind == "str" and t.typo})
    result.notes += [Note(n, "not valid T-SQL: a quote after '?+' closes the string too early "
                             "(the vendor's sample); read as the URL it clearly meant")
                     for n in typos]
    rw = Rewriter(s)
    calls = s.calls()
    groups, orphans = _groups(s, calls)
    edits: list[Edit] = []
    by_batch: dict[int, Accepted] = {}  # the rewrites accepted so far, per batch
    claimed: set[int] = set()
    for g in groups:
        line = s.line(s.sig[g.create.first].start)
        if not HTTP_PROGID.match(g.progid):
            why = f"'{g.progid[:60]}' is not an HTTP object"
            edits.append(rw.note_before(s.sig[g.create.first].start, LEFT_AS_IS + why))
            result.left.append(Note(line, why))
            claimed.update(id(c) for c in g.members)
            continue
        try:
            plan = rw.plan(g)
            accepted = by_batch.setdefault(g.batch, Accepted(s))
            if accepted.overlaps(plan.edits):
                raise Refuse("its statements overlap another call's")
            if _empties_a_block(s, accepted.around(plan.edits) + plan.edits):
                raise Refuse("removing its statements would leave an empty BEGIN … END block")
            accepted.add(plan.edits)
        except (Refuse, LookupError, ValueError, TypeError, AttributeError) as exc:
            # Anything but Refuse is a case this reader did not foresee: the call stays as it
            # is, which is always safe, instead of the whole file failing.
            why = exc if isinstance(exc, Refuse) else Refuse(
                f"this tool could not follow this call ({type(exc).__name__})")
            edits.append(rw.note_before(s.sig[g.create.first].start, LEFT_AS_IS + str(why)))
            result.left.append(Note(line, str(why)))
            claimed.update(id(c) for c in g.members)
            continue
        edits += plan.edits
        claimed.update(id(c) for c in g.members)
        result.rewritten.append(Note(line, plan.summary))
        result.notes += [Note(line, n) for n in plan.notes]
    for c in orphans:
        if id(c) in claimed:
            continue
        line = s.line(s.sig[c.first].start)
        why = f"{c.proc} on an object not created by sp_OACreate in this batch"
        edits.append(rw.note_before(s.sig[c.first].start, LEFT_AS_IS + why))
        result.left.append(Note(line, why))
    # A comment already there (a second run) is not added again.
    edits = [e for e in edits if not _already_there(text, e)]
    result.text = _apply(text, edits) or text
    return result


def _already_there(text: str, e: Edit) -> bool:
    if e.start != e.end or not e.text.strip().startswith(PREFIX.strip()):
        return False
    wanted = e.text.strip()
    before = text[:e.start].rstrip(" \t")
    before = before.removesuffix("\n").removesuffix("\r")
    return before.rstrip().endswith(wanted)


def _groups(s: Script, calls: list[Call]) -> tuple[list[Group], list[Call]]:
    """Each sp_OACreate with the calls on its handle variable that follow it in its batch (up
    to the next sp_OACreate into that variable); the calls on no such object apart."""
    groups: list[Group] = []
    orphans: list[Call] = []
    current: dict[tuple[int, str], Group] = {}
    for c in calls:
        batch = s.batch[c.first]
        if c.proc == "sp_oacreate":
            progid, handle = c.arg(0), c.arg(1)
            if progid is not None and progid.kind == "str" and handle is not None and \
                    handle.kind == "var":
                g = Group(c, handle.tok.value, progid.tok.value, [c], batch)
                groups.append(g)
                current[(batch, handle.tok.low)] = g
                continue
        h = c.arg(0)
        g = current.get((batch, h.tok.low)) if h is not None and h.kind == "var" else None
        if g is not None and c.proc != "sp_oacreate":
            g.members.append(c)
        else:
            orphans.append(c)
    return groups, orphans


def _apply(text: str, edits: list[Edit]) -> str | None:
    """The text with the edits made, or None when two of them overlap."""
    ordered = sorted(edits, key=lambda e: (e.start, e.end))
    out, pos = [], 0
    for e in ordered:
        if e.start < pos:
            return None
        out.append(text[pos:e.start])
        out.append(e.text)
        pos = e.end
    out.append(text[pos:])
    return "".join(out)


class Accepted:
    """The edits of the calls already rewritten in one batch, sorted, so that a new call is
    checked against its neighbours only."""

    def __init__(self, script: Script) -> None:
        self.s = script
        self.edits: list[Edit] = []
        self.starts: list[int] = []

    def add(self, edits: list[Edit]) -> None:
        for e in edits:
            i = bisect.bisect_right(self.starts, e.start)
            self.starts.insert(i, e.start)
            self.edits.insert(i, e)

    def overlaps(self, edits: list[Edit]) -> bool:
        for e in edits:
            i = bisect.bisect_left(self.starts, e.start)
            if i > 0 and self.edits[i - 1].end > e.start:
                return True
            if i < len(self.edits) and self.edits[i].start < max(e.end, e.start + 1):
                return True
        return False

    def around(self, edits: list[Edit]) -> list[Edit]:
        """The accepted edits without code chained to these by nothing but blanks and comments
        (an edit that leaves a statement ends the chain: the block is not empty there)."""
        sig = self.s.sig_starts
        out: list[Edit] = []
        for e in edits:
            i = bisect.bisect_left(self.starts, e.start) - 1
            edge = e.start
            while i >= 0 and not self.edits[i].code and \
                    bisect.bisect_left(sig, self.edits[i].end) == bisect.bisect_left(sig, edge):
                out.append(self.edits[i])
                edge, i = self.edits[i].start, i - 1
            i = bisect.bisect_left(self.starts, e.end)
            edge = e.end
            while i < len(self.edits) and not self.edits[i].code and \
                    bisect.bisect_left(sig, self.edits[i].start) == bisect.bisect_left(sig, edge):
                out.append(self.edits[i])
                edge, i = self.edits[i].end, i + 1
        return out


def _has_code(text: str) -> bool:
    return any(t.kind not in ("ws", "comment") for t in lex(text))


def _empties_a_block(s: Script, edits: list[Edit]) -> bool:
    """Whether these edits leave ``BEGIN`` (``BEGIN TRY``, ``BEGIN CATCH``) directly followed by
    ``END``: the removed spans next to each other (nothing but blanks and comments between)
    are taken together, and only the tokens around them are looked at."""
    ordered = sorted(edits, key=lambda e: (e.start, e.end))
    runs: list[list[Any]] = []  # [start, end, has code]
    for e in ordered:
        code = e.code
        if runs and not runs[-1][2] and not code and \
                bisect.bisect_left(s.sig_starts, e.start) == \
                bisect.bisect_left(s.sig_starts, runs[-1][1]):
            runs[-1][1] = max(runs[-1][1], e.end)
        else:
            runs.append([e.start, e.end, code])
    for start, end, code in runs:
        if code:
            continue
        before = bisect.bisect_left(s.sig_starts, start) - 1
        after = bisect.bisect_left(s.sig_starts, end)
        if s.is_word(before, "try", "catch") and s.is_word(before - 1, "begin"):
            before -= 1
        if s.is_word(before, "begin") and s.is_word(after, "end"):
            return True
    return False


# -- files -----------------------------------------------------------------------------------------

class InputError(Exception):
    """The file given cannot be used (the CLI's usage error: one line, exit 2)."""


def read_script(path: str | os.PathLike[str]) -> tuple[str, str]:
    """The file's text and its encoding (UTF-8, or UTF-16 when it starts with a byte order mark,
    as SSMS may save it)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a .sql file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8"
    try:
        return data.decode(encoding), encoding
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not {encoding.upper()} text (byte 0x{data[exc.start]:02x} "
                         f"at offset {exc.start}); save the script as UTF-8 and run again"
                         ) from None


def write_script(path: str | os.PathLike[str], text: str, encoding: str) -> Path:
    """Replace the file, keeping the original as ``FILE.bak`` (refused if one exists, so a
    second run never overwrites the true original)."""
    p = Path(path)
    backup = p.with_name(p.name + ".bak")
    if backup.exists():
        raise InputError(f"{backup} already exists: move it away, then run again")
    original = p.read_bytes()
    backup.write_bytes(original)
    tmp = p.with_name(p.name + ".sqlbridge-tmp")
    tmp.write_bytes(text.encode(encoding))
    os.replace(tmp, p)
    return backup


def run(path: str, write: bool, echo: Callable[..., Any]) -> int:
    """The ``sqlbridge migrate`` command: the diff on stdout, a summary on stderr, and the exit
    code (0 every call rewritten or none found, 1 some left as is, 2 a file that cannot be used:
    missing, not text, or its backup already there)."""
    from .cli_support import EXIT_NOT_SUCCEEDED, EXIT_OK, EXIT_USAGE

    try:
        text, encoding = read_script(path)
        result = migrate(text)
        backup = Path(path).with_name(Path(path).name + ".bak")
        if write and result.changed and backup.exists():
            # Checked before anything is printed: the refusal is the only line.
            raise InputError(f"{backup} already exists: move it away, then run again")
        echo(result.diff(str(path)), nl=False)
        for n in sorted(result.notes, key=lambda n: n.line):
            echo(f"{path}:{n.line}: note: {n.text}", err=True)
        for n in result.left:
            echo(f"{path}:{n.line}: left as is: {n.text}", err=True)
        summary = (f"{path}: {len(result.rewritten)} call(s) rewritten, {len(result.left)} "
                   f"left as is")
        if write and result.changed:
            write_script(path, result.text, encoding)
            summary += f"; written (the original is in {backup})"
        elif not result.changed:
            summary += "; nothing to change"
        echo(summary, err=True)
    except InputError as exc:
        echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    return EXIT_NOT_SUCCEEDED if result.left else EXIT_OK
