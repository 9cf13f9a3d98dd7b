"""How many times a PDF reader can draw each content stream of a file: the
repetition half of the file bound in :mod:`.files`.

A reader extracts the text of every page, and a page draws bytes the file
holds once as often as the file says: one content stream listed by many pages
(``/Contents 5 0 R`` on each) or many times in one ``/Contents`` array, a page
object listed many times in the page tree's ``/Kids`` (at every level, so the
page count can grow exponentially with the tree's depth), a Form XObject
invoked (``Do``) many times, from a page or from another form. Counting each
stream's inflated bytes once is then no bound at all; this module walks the
file's objects and returns the bytes drawn *beyond* one drawing of each stream
(:func:`repeated_bytes`), and the number of pages a reader lists.

The walk reads every object of the file (``N G obj`` headers in the file, and
the objects packed in object streams, ``/Type /ObjStm``), never the xref table,
so a file cannot hide an object from it; where it cannot tell what a reader
does, it errs high or gives up (:class:`NotBounded`, the file is not countable):

* an object's text runs from its header to the next header and must hold
  ``endobj`` (else something that looks like a header hides inside another
  object, and the split cannot be trusted); an object number defined more than
  once (incremental updates) stands for all its definitions, summed;
* the page tree is walked from every catalog's ``/Pages`` and from every node
  no ``/Kids`` lists, with multiplicity (a node listed twice counts twice); a
  node counts as a page unless it is ``/Type /Pages``, and its kids are walked
  whenever it has any; a cycle, or more than :data:`MAX_DEPTH` levels, gives up;
* a page draws each stream its ``/Contents`` lists (directly, in an array, or
  in an array object), once per listing; a stream drawn costs its bytes (what
  it inflates to, or its raw data, at least its ``/Length``) plus, per ``Do``
  token in it, the most any Form XObject of the file costs (page resources are
  not resolved: any form could be the one named);
* a Form XObject (any stream with a ``/Subtype`` other than ``/Image``) costs
  its bytes plus, per ``Do`` in it, the cost of the XObject its own
  ``/Resources`` name (inline, or one or two references away); a form without
  its own resources may draw any form, and a form that draws itself (directly
  or not) gives up, as does nesting deeper than :data:`MAX_DEPTH`.

Everything is read once: the cost is linear in the file's bytes plus the bytes
its streams inflate to (memoized per object; no structure is parsed past what
the file holds), and the totals are Python integers clamped at the caller's
cap, so an exponential page tree costs its size in steps, not its page count.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Final

__all__ = ["MAX_DEPTH", "NotBounded", "PdfDraws", "expansion", "glyph_expansion", "repeated_bytes"]

MAX_DEPTH: Final = 64
_WS = rb"[\x00\t\n\x0c\r ]"
_REGULAR = rb"[^\x00\t\n\x0c\r ()<>\[\]{}/%]"
_OBJ = re.compile(rb"(?<![0-9])(\d+)" + _WS + rb"+(\d+)" + _WS + rb"*obj(?!" + _REGULAR + rb")")
_REF = re.compile(rb"(?<![0-9])(\d+)" + _WS + rb"+\d+" + _WS + rb"+R(?!" + _REGULAR + rb")")
_STREAM_KW = re.compile(rb"(?<!end)stream(?:[ \t\x0c]*(?:\r\n|\n|\r))?")
_NAME = re.compile(rb"/(" + _REGULAR + rb"*)")
_HEX = re.compile(rb"#([0-9A-Fa-f]{2})")
_DO = re.compile(rb"(?<!" + _REGULAR + rb")Do(?!" + _REGULAR + rb")")
_NAMED_DO = re.compile(rb"/(" + _REGULAR + rb"*)" + _WS + rb"*Do(?!" + _REGULAR + rb")")
_INT = re.compile(rb"\d+")
_LENGTH = re.compile(
    rb"/Length(?!" + _REGULAR + rb")" + _WS + rb"*(\d+)(" + _WS + rb"+\d+" + _WS + rb"+R)?"
)


class NotBounded(Exception):
    """The file's structure is one the walk cannot bound (the reason as message)."""


@dataclass(slots=True)
class _Object:
    body: bytes  # the object's text before ``stream`` (its dictionary), or all of it
    data: bytes | None = None  # a stream's data as a reader gets it
    size: int = 0  # bytes a drawing of the stream shows at most


@dataclass(slots=True)
class PdfDraws:
    """What the walk found: pages a reader lists, and bytes drawn beyond one
    drawing per stream."""

    pages: int = 0
    repeated: int = 0
    objects: dict[int, list[_Object]] = field(default_factory=dict)


def _name(raw: bytes) -> bytes:
    return _HEX.sub(lambda m: bytes((int(m.group(1), 16),)), raw) if b"#" in raw else raw


def _value_after(body: bytes, key: bytes) -> list[bytes]:
    """The text after each ``/key`` name in *body*, up to the next ``/key``: the
    slices add up to at most the body's size, however many times the key
    appears. A value cut short reads as unterminated, and the walk gives up
    on it rather than under-count."""
    if b"#" in body:  # names may be spelled with #xx escapes: decode each
        starts = [m.end() for m in _NAME.finditer(body) if _name(m.group(1)) == key]
    else:
        starts = [m.end() for m in _key_pattern(key).finditer(body)]
    if not starts:
        return []
    ends = [*starts[1:], len(body)]
    return [
        body[start:end].lstrip(b"\x00\t\n\x0c\r ") for start, end in zip(starts, ends, strict=True)
    ]


@functools.cache
def _key_pattern(key: bytes) -> re.Pattern[bytes]:
    return re.compile(rb"/" + re.escape(key) + rb"(?!" + _REGULAR + rb")")


def _type(body: bytes) -> bytes | None:
    """The name after ``/Type`` (``b""`` when it is not a direct name, None when absent)."""
    values = _value_after(body, b"Type")
    if not values:
        return None
    match = _NAME.match(values[0])
    return _name(match.group(1)) if match else b""


def _refs_in(value: bytes) -> list[int] | None:
    """Object numbers of a reference or an array of references at the start of
    *value*; None when it is a single reference (its number as the only item
    is returned through :func:`_single_ref`)."""
    if value.startswith(b"["):
        end = value.find(b"]")
        if end < 0:
            raise NotBounded("an array without its end")
        if value.find(b"%", 1, end) >= 0 or value.find(b"(", 1, end) >= 0:
            # A comment or a string could hide the array's real end.
            raise NotBounded("an array of references holding a comment or a string")
        return [int(m.group(1)) for m in _REF.finditer(value, 1, end)]
    return None


def _single_ref(value: bytes) -> int | None:
    match = _REF.match(value)
    return int(match.group(1)) if match else None


class _Walk:
    def __init__(self, raw: bytes, inflated: dict[int, bytes], cap: int) -> None:
        self.raw = raw
        self.cap = cap
        self.objects: dict[int, list[_Object]] = {}
        self._read_objects(inflated)
        self.form_cost: dict[int, int] = {}
        self.stream_cost: dict[int, int] = {}
        self._any_form: int | None = None
        self._active: set[int] = set()

    # --- objects -------------------------------------------------------------
    def _read_objects(self, inflated: dict[int, bytes]) -> None:
        raw = self.raw
        matches = list(_OBJ.finditer(raw))
        headers = [(m.end(), int(m.group(1))) for m in matches]
        ends = [m.start() for m in matches[1:]]
        ends.append(len(raw))
        if not matches:
            return
        unsized: list[tuple[_Object, int]] = []
        for (body_start, number), end in zip(headers, ends, strict=True):
            if end != len(raw) and raw.find(b"endobj", body_start, end) < 0:
                raise NotBounded("an object without endobj before the next object")
            kw = _STREAM_KW.search(raw, body_start, end)
            if kw is None:
                self._add(number, _Object(raw[body_start:end]))
                continue
            data = inflated.get(kw.start())
            if data is not None:
                self._add(number, _Object(raw[body_start : kw.start()], data, len(data)))
                continue
            stop = raw.rfind(b"endstream", kw.end(), end)
            obj = _Object(raw[body_start : kw.start()], raw[kw.end() : stop if stop >= 0 else end])
            self._add(number, obj)
            unsized.append((obj, len(raw) - kw.end()))
        # A reader may take a raw stream's data by its /Length (read once all
        # objects are known, as it may be an indirect integer).
        for obj, room in unsized:
            obj.size = max(len(obj.data or b""), self._length(obj.body, room))
        for versions in list(self.objects.values()):
            for obj in versions:
                if obj.data is not None and _type(obj.body) == b"ObjStm":
                    self._unpack(obj)

    def _length(self, body: bytes, room: int) -> int:
        match = _LENGTH.search(body)
        if match is None:
            return 0
        if match.group(2) is None:
            return min(int(match.group(1)), room)
        # An indirect length: its object's integer, or all that follows.
        values = [_INT.match(v.body.strip()) for v in self.objects.get(int(match.group(1)), [])]
        lengths = [int(v.group()) for v in values if v is not None]
        return min(max(lengths), room) if lengths else room

    def _unpack(self, stream: _Object) -> None:
        data = stream.data or b""
        first = [_INT.match(v) for v in _value_after(stream.body, b"First")]
        count = [_INT.match(v) for v in _value_after(stream.body, b"N")]
        if not first or first[0] is None or not count or count[0] is None:
            raise NotBounded("an object stream without /First and /N")
        start, n = int(first[0].group()), int(count[0].group())
        numbers = [int(m.group()) for m in _INT.finditer(data, 0, min(start, len(data)))]
        if len(numbers) < 2 * n:
            raise NotBounded("an object stream whose index is short")
        offsets = [*(start + numbers[2 * i + 1] for i in range(n)), len(data)]
        if any(a > b for a, b in pairwise(offsets)):
            raise NotBounded("an object stream whose offsets are out of order")
        for i in range(n):
            self._add(numbers[2 * i], _Object(data[offsets[i] : max(offsets[i], offsets[i + 1])]))

    def _add(self, number: int, obj: _Object) -> None:
        self.objects.setdefault(number, []).append(obj)

    def _get(self, number: int) -> list[_Object]:
        return self.objects.get(number, [])

    def _clamp(self, value: int) -> int:
        return min(value, self.cap)

    # --- XObjects -------------------------------------------------------------
    def _xobject_map(self, body: bytes, hops: int = 2) -> dict[bytes, list[int]] | None:
        """Name → object numbers of the XObjects the ``/Resources`` in *body*
        name; None when *body* has no resources of its own."""
        resources = _value_after(body, b"Resources")
        if not resources:
            return None
        names: dict[bytes, list[int]] = {}
        for value in resources:
            ref = _single_ref(value)
            if ref is not None:
                if hops <= 0:
                    raise NotBounded("resources too many references away")
                for obj in self._get(ref):
                    found = self._xobject_map(b"/Resources " + obj.body, hops - 1)
                    for name, numbers in (found or {}).items():
                        names.setdefault(name, []).extend(numbers)
                continue
            for table in _value_after(value, b"XObject"):
                ref = _single_ref(table)
                texts = [o.body for o in self._get(ref)] if ref is not None else [table]
                for text in texts:
                    self._names_in(text, names)
        return names

    @staticmethod
    def _names_in(table: bytes, names: dict[bytes, list[int]]) -> None:
        if not table.startswith(b"<<"):
            return
        end = table.find(b">>")
        if end < 0 or any(table.find(c, 2, end) >= 0 for c in (b"<<", b"%", b"(")):
            raise NotBounded("an XObject table that nests dictionaries")
        for match in re.finditer(
            rb"/(" + _REGULAR + rb"*)" + _WS + rb"*" + _REF.pattern, table[:end]
        ):
            names.setdefault(_name(match.group(1)), []).append(int(match.group(2)))

    def _is_form(self, obj: _Object) -> bool:
        if obj.data is None:
            return False
        values = _value_after(obj.body, b"Subtype")
        if not values:
            return False
        match = _NAME.match(values[0])
        return not (match and _name(match.group(1)) == b"Image")

    def _dos(self, data: bytes) -> Counter[bytes | None]:
        """``Do`` tokens in *data* by the name before each (None: no name)."""
        found: Counter[bytes | None] = Counter(map(_name, _NAMED_DO.findall(data)))
        unnamed = len(_DO.findall(data)) - sum(found.values())
        if unnamed > 0:
            found[None] = unnamed
        return found

    def any_form(self) -> int:
        """The most one ``Do`` whose target is not resolved can cost."""
        if self._any_form is None:
            self._any_form = 0
            best = 0
            for number, versions in self.objects.items():
                if any(self._is_form(obj) for obj in versions):
                    best = max(best, self._form(number, 0))
            self._any_form = best
        return self._any_form

    def _form(self, number: int, depth: int) -> int:
        """What one drawing of XObject *number* costs (all its definitions)."""
        if number in self.form_cost:
            return self.form_cost[number]
        if number in self._active or depth > MAX_DEPTH:
            raise NotBounded("its form XObjects draw one another in a cycle or too deep")
        self._active.add(number)
        total = 0
        for obj in self._get(number):
            if not self._is_form(obj):
                continue
            table = self._xobject_map(obj.body)
            cost = obj.size
            for name, times in self._dos(obj.data or b"").items():
                if table is None or name is None:
                    raise NotBounded("a form XObject without its own resources draws XObjects")
                cost += times * sum(self._form(target, depth + 1) for target in table.get(name, ()))
                cost = self._clamp(cost)
            total = self._clamp(total + cost)
        self._active.discard(number)
        self.form_cost[number] = total
        return total

    # --- pages ----------------------------------------------------------------
    def _content(self, number: int) -> int:
        """What one drawing of content stream *number* costs."""
        cost = self.stream_cost.get(number)
        if cost is None:
            cost = 0
            for obj in self._get(number):
                if obj.data is None:
                    continue
                dos = sum(self._dos(obj.data).values())
                cost = self._clamp(cost + obj.size + dos * self.any_form())
            self.stream_cost[number] = cost
        return cost

    def _contents(self, body: bytes) -> Iterable[int]:
        for value in _value_after(body, b"Contents"):
            refs = _refs_in(value)
            if refs is not None:
                yield from refs
                continue
            ref = _single_ref(value)
            if ref is None:
                continue
            for obj in self._get(ref):
                if obj.data is not None:
                    yield ref
                else:
                    yield from _refs_in(obj.body.lstrip(b"\x00\t\n\x0c\r ")) or ()

    def _kids(self, body: bytes) -> list[int]:
        kids: list[int] = []
        for value in _value_after(body, b"Kids"):
            refs = _refs_in(value)
            if refs is None and (ref := _single_ref(value)) is not None:
                for obj in self._get(ref):
                    refs = (refs or []) + (_refs_in(obj.body.lstrip(b"\x00\t\n\x0c\r ")) or [])
            kids.extend(refs or ())
        return kids

    def walk(self) -> PdfDraws:
        kids_of: dict[int, list[int]] = {}
        listed: set[int] = set()
        roots: list[int] = []
        for number, versions in self.objects.items():
            for obj in versions:
                kind = _type(obj.body)
                if kind == b"Catalog":
                    for value in _value_after(obj.body, b"Pages"):
                        if (ref := _single_ref(value)) is not None:
                            roots.append(ref)
                kids = self._kids(obj.body)
                if kids:
                    kids_of.setdefault(number, []).extend(kids)
                    listed.update(kids)
        roots.extend(number for number in kids_of if number not in listed)
        roots = list(dict.fromkeys(roots))
        # Times each node is reached: summed over every path from a root.
        reached: Counter[int] = Counter()
        order = self._topological(roots, kids_of)
        for root in roots:
            reached[root] += 1
        for number in order:
            times = self._clamp(reached[number])
            for kid in kids_of.get(number, ()):
                reached[kid] = self._clamp(reached[kid] + times)
        pages = 0
        drawn = 0
        distinct: set[int] = set()
        for number, times in reached.items():
            for obj in self._get(number):
                # A stream listed as a kid is a page too (pypdf reads its dictionary).
                if _type(obj.body) == b"Pages":
                    continue
                pages = self._clamp(pages + times)
                contents = list(self._contents(obj.body))
                distinct.update(contents)
                one = sum(self._content(ref) for ref in contents)
                drawn = self._clamp(drawn + times * one)
        # One drawing of each content stream's own bytes is in the caller's count.
        once = sum(obj.size for ref in distinct for obj in self._get(ref) if obj.data is not None)
        return PdfDraws(pages, max(0, drawn - once), self.objects)

    def _topological(self, roots: list[int], kids_of: dict[int, list[int]]) -> list[int]:
        """Nodes reachable from *roots*, parents before kids; a cycle or a tree
        deeper than MAX_DEPTH gives up."""
        order: list[int] = []
        state: dict[int, int] = {}  # 1: on the path, 2: done
        for root in roots:
            if state.get(root):
                continue
            stack: list[tuple[int, int]] = [(root, 0)]
            state[root] = 1
            while stack:
                number, index = stack[-1]
                kids = kids_of.get(number, [])
                if index < len(kids):
                    stack[-1] = (number, index + 1)
                    kid = kids[index]
                    if state.get(kid) == 1:
                        raise NotBounded("its page tree has a cycle")
                    if not state.get(kid):
                        if len(stack) > MAX_DEPTH:
                            raise NotBounded("its page tree is too deep")
                        state[kid] = 1
                        stack.append((kid, 0))
                    continue
                stack.pop()
                state[number] = 2
                order.append(number)
        order.reverse()
        return order


def repeated_bytes(raw: bytes, inflated: dict[int, bytes], cap: int) -> PdfDraws:
    """Pages a reader lists in *raw*, and the bytes its pages draw beyond one
    drawing of each content stream (both clamped at *cap*). *inflated* maps
    the offset of each ``stream`` keyword whose data inflated to what it
    inflated to. Raises :class:`NotBounded`."""
    return _Walk(raw, inflated, cap).walk()


_BF_BEGIN = re.compile(rb"begin(bfchar|bfrange)")
_HEX_STRING = re.compile(rb"<([0-9A-Fa-f\x00\t\n\x0c\r ]*)>")
_NOT_HEX = re.compile(rb"[^0-9A-Fa-f]")
_BF_ITEM = re.compile(rb"<[^<>]*>|\[[^\]]*\]")


def expansion(chunks: Iterable[bytes]) -> int:
    """The most UTF-8 bytes one drawn byte can turn into through a ``ToUnicode``
    CMap of the file (1 when it has none): the longest destination string of
    any ``bfchar``/``bfrange`` block in *chunks* (the file and what its streams
    inflate to), as UTF-8 (:func:`_utf8_bytes`). A code is at least one byte and a token at least one
    UTF-8 byte of the extracted text, so a stream of ``n`` bytes extracts to at
    most ``n`` times this many tokens. Every hex string of a block is taken as
    a possible destination (source codes too: they are short, so only ever
    raise it), a ``bfrange`` destination stands for the strings it counts up
    to (same length), and an array destination for each of its strings.
    Linear in the chunks' size."""
    longest = 1
    for chunk in chunks:
        if b"beginbf" not in chunk:
            continue
        # Each block runs to its end keyword, or to the chunk's end: each byte
        # is read once, however many begin keywords there are.
        at = 0
        while (begin := _BF_BEGIN.search(chunk, at)) is not None:
            kind = begin.group(1)
            end = chunk.find(b"end" + kind, begin.end())
            stop = len(chunk) if end < 0 else end
            longest = max(longest, _longest_destination(kind, chunk[begin.end() : stop]))
            at = stop
    return longest


def _longest_destination(kind: bytes, block: bytes) -> int:
    """The most UTF-8 bytes of a destination in a ``bfchar`` block (pairs of
    source and destination strings) or a ``bfrange`` block (triples whose
    destination is a string or an array of strings); in a block of another
    shape, every string counts as a destination, at 3 bytes a unit."""
    items = _BF_ITEM.findall(block)
    size = 3 if kind == b"bfrange" else 2
    sources = [item for i, item in enumerate(items) if i % size != size - 1]
    if len(items) % size or any(item.startswith(b"[") for item in sources):
        return max((3 * -(-len(d) // 4) for d in _hex_digits(block)), default=1)
    longest = 1
    for destination in items[size - 1 :: size]:
        if destination.startswith(b"["):  # one whole string per code of the range
            for digits in _hex_digits(destination):
                longest = max(longest, _utf8_bytes(digits, False))
        else:
            digits = _NOT_HEX.sub(b"", destination)
            longest = max(longest, _utf8_bytes(digits, kind == b"bfrange"))
    return longest


def _hex_digits(text: bytes) -> list[bytes]:
    return [_NOT_HEX.sub(b"", m.group(1)) for m in _HEX_STRING.finditer(text)]


def _utf8_bytes(digits: bytes, ranged: bool) -> int:
    """The most UTF-8 bytes the hex string *digits* stands for as a ``ToUnicode``
    destination: exact for a string of whole UTF-16 units that decodes; else 3
    per unit (a unit is at most 3 bytes of UTF-8, a surrogate pair 4). In a
    ``bfrange`` its last unit counts up, so it counts as 3."""
    units = -(-len(digits) // 4)
    if len(digits) % 4 or not digits:
        return units * 3
    head = digits[:-4] if ranged else digits
    try:
        size = len(bytes.fromhex(head.decode("ascii")).decode("utf-16-be").encode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return units * 3
    return size + 3 if ranged else size


# A name followed by an array or a reference: where ``/Differences`` may sit
# (its name possibly spelled with ``#`` escapes, which a reader decodes). The
# name and the numbers are taken whole (possessive quantifiers): ``/a1111 5 X``
# would otherwise be split at every digit and retried, quadratic in its length.
_NAMED_VALUE = re.compile(
    b"".join(
        (
            rb"/(",
            _REGULAR,
            rb"++)",
            _WS,
            rb"*+(?:(\[)|(\d++)",
            _WS,
            rb"++\d++",
            _WS,
            rb"++R(?!",
            _REGULAR,
            rb"))",
        )
    )
)
_ONE_UNI = re.compile(rb"uni[0-9A-F]{4}")
_ONE_U = re.compile(rb"u[0-9A-F]{4,6}")


def glyph_expansion(objects: dict[int, list[_Object]]) -> int:
    """The most UTF-8 bytes one drawn byte can turn into through a font's
    ``/Encoding /Differences`` array (1 when the file has none): a code there
    names a glyph, and a reader without a ``ToUnicode`` map shows the glyph
    name's characters. *objects* are every object of the file, packed ones
    included (:attr:`PdfDraws.objects`); the array is read where the key
    holds it, or from the object a reference names (once, however many keys
    name it). Linear in the objects' dictionaries (stream data is not read)."""
    longest = 1
    read: set[int] = set()  # arrays by reference: each object read once
    for versions in objects.values():
        for obj in versions:
            body = obj.body
            if b"/" not in body:
                continue
            at = 0
            while (match := _NAMED_VALUE.search(body, at)) is not None:
                at = match.end()
                if _name(match.group(1)) != b"Differences":
                    continue
                if match.group(2) is not None:  # the array itself, up to its end
                    end = body.find(b"]", at)
                    arrays = [body[at : len(body) if end < 0 else end]]
                    at = len(body) if end < 0 else end + 1
                elif (number := int(match.group(3))) not in read:
                    read.add(number)
                    arrays = [v.body for v in objects.get(number, [])]
                else:
                    continue
                for array in arrays:
                    for name in _NAME.findall(array):
                        longest = max(longest, _glyph_bytes(_name(name)))
    return longest


@functools.lru_cache(maxsize=4096)
def _glyph_bytes(name: bytes) -> int:
    """The most UTF-8 bytes a reader shows for the glyph *name*: its characters
    when the Adobe Glyph List names it, or one ``uniXXXX`` / ``uXXXX`` code
    point; else whichever is longer of what the AGL's rules make of it
    (``f_f_i`` is ``ffi``) and the name itself, as a reader that knows no such
    glyph shows it (pypdf: ``/`` and the name)."""
    from fontTools import agl

    text = name.decode("latin-1")
    known = agl.LEGACY_AGL2UV.get(text)
    if known is not None:
        return max(1, len("".join(map(chr, known)).encode("utf-8", "surrogatepass")))
    if _ONE_UNI.fullmatch(name):
        return 3
    if _ONE_U.fullmatch(name):
        return 4
    as_agl = len(agl.toUnicode(text).encode("utf-8", "surrogatepass"))
    return max(as_agl, len(text.encode("utf-8")) + 1)
