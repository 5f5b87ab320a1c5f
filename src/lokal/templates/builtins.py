"""Values, Go-style formatting and the template functions (the function table ``_FUNCS``)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from lokal.templates.common import MAX_OUTPUT_CHARS


class _FuncError(Exception):
    """Raised by template functions; turned into a TemplateError with the line."""


def _type_name(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "[]interface {}"
    if isinstance(v, Mapping):
        return "map[string]interface {}"
    return type(v).__name__


def _truth(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, (bool, int, float)):
        return v != 0
    if isinstance(v, (str, list, tuple, Mapping)):
        return len(v) > 0
    return True


def _sorted_keys(d: Mapping[Any, Any]) -> list[Any]:
    try:
        return sorted(d)
    except TypeError:
        return sorted(d, key=lambda k: (type(k).__name__, repr(k)))


def _go_float(v: float) -> str:
    """Go's %v for float64: shortest repr, exponent form when exp < -4 or >= 6."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "-0" if math.copysign(1.0, v) < 0 else "0"
    sign = "-" if v < 0 else ""
    tup = Decimal(repr(abs(v))).as_tuple()
    dp = len(tup.digits) + int(tup.exponent)  # position of the decimal point
    digits = "".join(map(str, tup.digits)).rstrip("0") or "0"
    exp = dp - 1
    if exp < -4 or exp >= 6:
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mant}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"
    if dp <= 0:
        return f"{sign}0.{'0' * -dp}{digits}"
    if dp >= len(digits):
        return sign + digits + "0" * (dp - len(digits))
    return f"{sign}{digits[:dp]}.{digits[dp:]}"


def _fmt_value(v: Any, nested: bool = False) -> str:
    """Go's default ``{{.X}}`` / ``%v`` printing."""
    if v is None:
        return "<nil>" if nested else ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(_fmt_value(x, True) for x in v) + "]"
    if isinstance(v, Mapping):
        return "map[" + " ".join(
            f"{_fmt_value(k, True)}:{_fmt_value(v[k], True)}" for k in _sorted_keys(v)) + "]"
    return str(v)


def _go_quote(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in "\n\t\r\a\b\f\v":
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r", "\a": "\\a",
                        "\b": "\\b", "\f": "\\f", "\v": "\\v"}[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            cp = ord(ch)
            out.append(f"\\x{cp:02x}" if cp < 0x80 else f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}")
    out.append('"')
    return "".join(out)


def _limit_check(total: int) -> None:
    if total > MAX_OUTPUT_CHARS:
        raise _FuncError("template output too large")


def _str_arg(v: Any) -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        raise _FuncError(f"wrong type for value; expected string; got {_type_name(v)}")
    return v


def _cmp_kind(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    return "other"


def _fn_eq(a: Any, *rest: Any) -> bool:
    ka = _cmp_kind(a)
    for b in rest:
        kb = _cmp_kind(b)
        if ka == "nil" or kb == "nil":
            if ka == kb:
                return True
            continue
        if ka != kb:
            raise _FuncError("incompatible types for comparison")
        if ka == "other":
            raise _FuncError(f"non-comparable type {_type_name(a)}")
        if a == b:
            return True
    return False


def _ordered(a: Any, b: Any) -> None:
    ka, kb = _cmp_kind(a), _cmp_kind(b)
    if ka not in ("number", "string") or kb not in ("number", "string"):
        raise _FuncError("invalid type for comparison")
    if ka != kb:
        raise _FuncError("incompatible types for comparison")


def _fn_lt(a: Any, b: Any) -> bool:
    _ordered(a, b)
    return bool(a < b)


def _fn_le(a: Any, b: Any) -> bool:
    _ordered(a, b)
    return bool(a <= b)


def _fn_len(v: Any) -> int:
    if isinstance(v, str):
        return len(v.encode("utf-8"))  # Go counts bytes
    if isinstance(v, (list, tuple, Mapping)):
        return len(v)
    raise _FuncError(f"len of {'nil pointer' if v is None else 'type ' + _type_name(v)}")


def _fn_index(item: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(item, Mapping):
            try:
                item = item.get(k)
            except TypeError:
                raise _FuncError(f"value has type {_type_name(k)}; should be string") from None
        elif isinstance(item, (list, tuple, str)):
            if isinstance(k, bool) or not isinstance(k, int):
                raise _FuncError(f"cannot index slice/array with type {_type_name(k)}")
            seq = item.encode("utf-8") if isinstance(item, str) else item
            if not 0 <= k < len(seq):
                raise _FuncError(f"index out of range: {k}")
            item = seq[k]
        elif item is None:
            raise _FuncError("index of untyped nil")
        else:
            raise _FuncError(f"can't index item of type {_type_name(item)}")
    return item


def _fn_print(*args: Any) -> str:
    out, total = [], 0
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        s = _fmt_value(a)
        total += len(s) + 1
        _limit_check(total)
        out.append(s)
    return "".join(out)


def _fn_println(*args: Any) -> str:
    parts = [_fmt_value(a) for a in args]
    _limit_check(sum(map(len, parts)) + len(parts))
    return " ".join(parts) + "\n"


_VERB_RE = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d*))?(.)?", re.S)


def _bad_verb(verb: str, a: Any) -> str:
    return f"%!{verb}({_type_name(a)}={_fmt_value(a, True)})"


def _fmt_verb(verb: str, flags: str, width: int | None, prec: int | None, a: Any) -> str:
    numeric = False
    if verb in "vs":
        s = _fmt_value(a)
        if verb == "s" and prec is not None:
            s = s[:prec]
    elif verb == "q":
        s = _go_quote(a if isinstance(a, str) else _fmt_value(a))
    elif verb == "t":
        if not isinstance(a, bool):
            return _bad_verb(verb, a)
        s = "true" if a else "false"
    elif verb in "dxXobc":
        if isinstance(a, str) and verb in "xX":
            s = a.encode("utf-8").hex()
            s = s.upper() if verb == "X" else s
        elif isinstance(a, bool) or not isinstance(a, int):
            return _bad_verb(verb, a)
        elif verb == "c":
            s = chr(a) if 0 <= a <= 0x10FFFF else "\ufffd"
        else:
            numeric = True
            s = format(a, ("#" if "#" in flags and verb != "d" else "") + verb)
            if a >= 0 and "+" in flags:
                s = "+" + s
            elif a >= 0 and " " in flags:
                s = " " + s
    elif verb in "eEfFgG":
        if isinstance(a, bool) or not isinstance(a, (int, float)):
            return _bad_verb(verb, a)
        numeric, x = True, float(a)
        if not math.isfinite(x) or (verb in "gG" and prec is None):
            s = _go_float(x)
            s = s.upper() if verb == "G" else s
            if x >= 0 and "+" in flags and not s.startswith("+"):
                s = "+" + s
        else:
            s = format(x, ("+" if "+" in flags else "") + f".{6 if prec is None else prec}{verb}")
    else:
        return _bad_verb(verb, a)
    if width is not None and len(s) < width:
        if "-" in flags:
            s = s.ljust(width)
        elif "0" in flags and numeric:
            sign = s[0] if s[:1] in ("+", "-", " ") else ""
            s = sign + s[len(sign):].rjust(width - len(sign), "0")
        else:
            s = s.rjust(width)
    return s


def _fn_printf(fmt: Any, *args: Any) -> str:
    fmt = _str_arg(fmt)
    out: list[str] = []
    total, ai, pos = 0, 0, 0

    def add(s: str) -> None:
        nonlocal total
        total += len(s)
        _limit_check(total)
        out.append(s)

    for m in _VERB_RE.finditer(fmt):
        add(fmt[pos:m.start()])
        pos = m.end()
        flags, width, prec, verb = m.groups()
        if verb is None:
            add("%!(NOVERB)")
            continue
        if verb == "%":
            add("%")
            continue
        if len(width or "") > 8 or len(prec or "") > 8:
            raise _FuncError("template output too large")
        w = int(width) if width else None
        p = None if prec is None else int(prec or "0")
        _limit_check(max(w or 0, p or 0))
        if ai >= len(args):
            add(f"%!{verb}(MISSING)")
            continue
        add(_fmt_verb(verb, flags, w, p, args[ai]))
        ai += 1
    add(fmt[pos:])
    if ai < len(args):
        add("%!(EXTRA " + ", ".join(f"{_type_name(a)}={_fmt_value(a, True)}" for a in args[ai:]) + ")")
    return "".join(out)


def _fn_to_json(v: Any) -> str:
    try:
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return ""  # sprig's toJson swallows marshalling errors


def _fn_replace(old_v: Any, new_v: Any, s_v: Any) -> str:
    old, new, s = _str_arg(old_v), _str_arg(new_v), _str_arg(s_v)
    count = len(s) + 1 if old == "" else s.count(old)
    _limit_check(len(s) + count * (len(new) - len(old)))
    return s.replace(old, new)


def _fn_join(sep_v: Any, v: Any) -> str:
    sep = _str_arg(sep_v)
    if v is None:
        items: Iterable[Any] = []
    elif isinstance(v, (list, tuple)):
        items = [x for x in v if x is not None]
    else:
        items = [v]
    parts, total = [], 0
    for x in items:
        s = _fmt_value(x)
        total += len(s) + len(sep)
        _limit_check(total)
        parts.append(s)
    return sep.join(parts)


def _fn_default(d: Any, *given: Any) -> Any:
    return given[0] if given and _truth(given[0]) else d


def _strfn(f: Callable[..., Any]) -> Callable[..., Any]:
    return lambda *a: f(*map(_str_arg, a))


# name -> (implementation, min args, max args or None)
_FUNCS: dict[str, tuple[Callable[..., Any] | None, int, int | None]] = {
    "and": (None, 1, None),
    "or": (None, 1, None),
    "not": (lambda v: not _truth(v), 1, 1),
    "eq": (_fn_eq, 2, None),
    "ne": (lambda a, b: not _fn_eq(a, b), 2, 2),
    "lt": (_fn_lt, 2, 2),
    "le": (_fn_le, 2, 2),
    "gt": (lambda a, b: _fn_lt(b, a), 2, 2),
    "ge": (lambda a, b: _fn_le(b, a), 2, 2),
    "len": (_fn_len, 1, 1),
    "index": (_fn_index, 1, None),
    "print": (_fn_print, 0, None),
    "println": (_fn_println, 0, None),
    "printf": (_fn_printf, 1, None),
    "toJson": (_fn_to_json, 1, 1),
    "trim": (_strfn(str.strip), 1, 1),
    "lower": (_strfn(str.lower), 1, 1),
    "upper": (_strfn(str.upper), 1, 1),
    "contains": (_strfn(lambda sub, s: sub in s), 2, 2),
    "hasPrefix": (_strfn(lambda pre, s: s.startswith(pre)), 2, 2),
    "hasSuffix": (_strfn(lambda suf, s: s.endswith(suf)), 2, 2),
    "trimPrefix": (_strfn(lambda pre, s: s[len(pre):] if s.startswith(pre) else s), 2, 2),
    "trimSuffix": (_strfn(lambda suf, s: s[:-len(suf)] if suf and s.endswith(suf) else s), 2, 2),
    "replace": (_fn_replace, 3, 3),
    "join": (_fn_join, 2, 2),
    "default": (_fn_default, 1, 2),
    "empty": (lambda v: not _truth(v), 1, 1),
}
