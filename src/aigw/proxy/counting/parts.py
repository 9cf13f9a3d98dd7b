"""The content-part walk of :mod:`.collect`: a message's ``content`` (text,
refusal, image, audio and file parts) and what of a part or mapping no rule read.

Every part is either counted by its rule or, when unknown, as its JSON text
(docs/proxy.md, "Input counting").
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from aigw.proxy.counting.encodings import MAX_TOKEN_BYTES
from aigw.proxy.counting.files import file_data_tokens, file_part_reason
from aigw.proxy.counting.free import is_setting
from aigw.proxy.counting.functions import compact_json
from aigw.proxy.counting.images import image_part_tokens
from aigw.proxy.counting.media import audio_part_tokens

# A remote image URL is not shown to the model; a longer one is counted as text.
_FREE_URL_CHARS = 2048


class PartWalk:
    """The part of :class:`.collect._Collector` that walks content parts, with
    the state it adds to (the collector sets it up)."""

    __slots__ = ("fixed", "model", "stop_above", "texts", "uncountable")

    fixed: int
    model: str
    stop_above: int | None
    texts: list[str]
    uncountable: str

    def _json(self, value: object) -> None:
        self.texts.append(compact_json(value))

    def _content(self, content: object, suffix: str) -> None:
        texts = self.texts
        if isinstance(content, str):
            texts.append(content + suffix if suffix else content)
            return
        if not isinstance(content, list):
            if content is not None:
                self._json(content)
            if suffix:
                texts.append(suffix)
            return
        last_text = -1
        for part in content:
            if not isinstance(part, Mapping):
                self._json(part)
                continue
            kind = part.get("type")
            if kind == "text" or kind == "refusal":
                value = part.get(kind)
                if isinstance(value, str):
                    texts.append(value)
                    last_text = len(texts) - 1
                else:
                    self._json(value)
                self._extra(part, ("type", kind), free=("cache_control",))
            elif kind == "image_url":
                image = part.get("image_url")
                self.fixed += image_part_tokens(image, self.model)
                # Reading an image header takes up to ~1 ms of GIL: let the loop in.
                time.sleep(0)
                url = image.get("url") if isinstance(image, Mapping) else image
                if (
                    isinstance(url, str)
                    and not url.startswith("data:")
                    and len(url) > _FREE_URL_CHARS
                ):
                    texts.append(url)
                if isinstance(image, Mapping):
                    self._extra(image, ("url",), free=("detail",))
                self._extra(part, ("type", "image_url"), free=("cache_control",))
            elif kind == "input_audio" and (
                tokens := audio_part_tokens(audio := part.get("input_audio"))
            ):
                # Its duration at 20 tokens a second (media.py); what else the
                # part holds as JSON text.
                self.fixed += tokens
                if isinstance(audio, Mapping):
                    self._extra(audio, ("data",), free=("format",))
                self._extra(part, ("type", "input_audio"))
            elif kind == "file":
                self._file(part.get("file"))
                self._extra(part, ("type", "file"), free=("cache_control",))
            else:
                # Audio whose duration cannot be read, unknown parts: their JSON
                # text (see docs/proxy.md).
                self._json(part)
        if suffix:
            if last_text >= 0:
                texts[last_text] += suffix
            else:
                texts.append(suffix)

    def _file(self, file: object) -> None:
        """A ``file`` part: inline ``file_data`` by the bound of :mod:`.files`;
        what the gateway cannot see or bound (``file_id``, an unreadable file)
        makes the request not countable, its JSON text counted all the same."""
        data = file.get("file_data") if isinstance(file, Mapping) else None
        # A reference beside inline data: the upstream may read either.
        referenced = isinstance(file, Mapping) and ("file_id" in file or "file_url" in file)
        if isinstance(file, Mapping) and isinstance(data, str) and not referenced:
            room = None if self.stop_above is None else self.stop_above - self.fixed
            bound = file_data_tokens(data, self.model, room)
            time.sleep(0)  # inflating holds the GIL: let the loop in
            if bound.tokens is not None:
                self.fixed += bound.tokens
                self._extra(file, ("file_data",))
                return
            # Not countable: a key with an input limit refuses it, so its data
            # is not tokenized, only bounded below (no token holds more bytes).
            self.uncountable = self.uncountable or f"file part: {bound.reason}"
            self.fixed += -(-len(data) // MAX_TOKEN_BYTES)
            self._extra(file, ("file_data",))
            return
        elif isinstance(file, Mapping):
            self.uncountable = self.uncountable or f"file part: {file_part_reason(file)}"
        else:
            self.uncountable = self.uncountable or "file part: no file object"
        self._json(file)

    def _extra(
        self, mapping: Mapping[str, Any], known: tuple[object, ...], free: tuple[str, ...] = ()
    ) -> None:
        """Count what of *mapping* no rule read: keys not in *known*, and keys in
        *free* (settings such as ``detail`` or ``cache_control``) once they hold
        more than a setting can (:func:`is_setting`), as their JSON text."""
        for key, value in mapping.items():
            if key in known or (key in free and is_setting(value)):
                continue
            self._json({key: value})
