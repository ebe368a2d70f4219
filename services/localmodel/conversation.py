"""The conversation: ordered Realtime items with their audio, per session
(https://platform.openai.com/docs/api-reference/realtime-client-events/conversation/item/create).

Items are plain dicts in the GA shape (``id``, ``object: "realtime.item"``, ``type``, ``status``, ``role``,
``content`` …). Audio bytes are kept beside the item (never in ``item.added`` events) and included, base64,
only in ``conversation.item.retrieved``. At most :data:`MAX_ITEMS` items are kept (oldest dropped) so a long
call cannot grow without bound.
"""

from __future__ import annotations

import base64
import copy
from dataclasses import dataclass, field
from typing import Any, Final

from services.localmodel.protocol import ProtocolError

__all__ = ["MAX_ITEMS", "Conversation", "StoredItem"]

MAX_ITEMS: Final = 200


@dataclass
class StoredItem:
    """An item and, for audio content, its raw bytes and duration (ms) in the session's format."""

    item: dict[str, Any]
    audio: bytearray = field(default_factory=bytearray)
    audio_ms: float = 0.0
    segments: list[tuple[float, float, str]] = field(default_factory=list)
    """Assistant audio: (start_ms, end_ms, text) per spoken piece, for truncation."""


class Conversation:
    """Ordered items with insert-after, retrieve, delete and truncate."""

    def __init__(self) -> None:
        self._items: list[StoredItem] = []

    def __len__(self) -> int:
        return len(self._items)

    def ids(self) -> list[str]:
        """Item ids in conversation order."""
        return [s.item["id"] for s in self._items]

    def get(self, item_id: str) -> StoredItem | None:
        """The stored item with ``item_id``, or None."""
        return next((s for s in self._items if s.item["id"] == item_id), None)

    def items(self) -> list[StoredItem]:
        """All stored items, in order (a copy of the list)."""
        return list(self._items)

    def add(self, stored: StoredItem, previous_item_id: str | None = None, *,
            event_id: str | None = None) -> str | None:
        """Insert ``stored`` after ``previous_item_id`` (``"root"`` = first; None = append). Returns the id of
        the item now before it (None at the start).

        Raises:
            ProtocolError: ``previous_item_id`` is unknown (``invalid_value``) or the id already exists.
        """
        item_id = stored.item["id"]
        if self.get(item_id) is not None:
            raise ProtocolError("invalid_value", f"Item with id '{item_id}' already exists.", param="item.id",
                                event_id=event_id)
        if previous_item_id is None:
            index = len(self._items)
        elif previous_item_id == "root":
            index = 0
        else:
            found = [i for i, s in enumerate(self._items) if s.item["id"] == previous_item_id]
            if not found:
                raise ProtocolError("invalid_value", f"Item with id '{previous_item_id}' not found.",
                                    param="previous_item_id", event_id=event_id)
            index = found[0] + 1
        self._items.insert(index, stored)
        if len(self._items) > MAX_ITEMS:
            del self._items[0]
            index -= 1
        return self._items[index - 1].item["id"] if index > 0 else None

    def delete(self, item_id: str, *, event_id: str | None = None) -> None:
        """Remove an item.

        Raises:
            ProtocolError: no such item (``invalid_value``).
        """
        stored = self._require(item_id, event_id)
        self._items.remove(stored)

    def retrieved(self, item_id: str, fmt_name: str, *, event_id: str | None = None) -> dict[str, Any]:
        """A copy of the item with its audio (base64) in the audio content part, for ``item.retrieved``.

        Raises:
            ProtocolError: no such item.
        """
        stored = self._require(item_id, event_id)
        item = copy.deepcopy(stored.item)
        if stored.audio:
            for part in item.get("content") or []:
                if part.get("type") in ("input_audio", "output_audio"):
                    part["audio"] = base64.b64encode(bytes(stored.audio)).decode()
                    if part["type"] == "input_audio":
                        part.setdefault("format", fmt_name)
        return item

    def truncate(self, item_id: str, content_index: int, audio_end_ms: int, bytes_per_ms: float, *,
                 event_id: str | None = None) -> None:
        """Cut an assistant audio item at ``audio_end_ms``: audio after it is dropped and the transcript keeps
        only what was spoken by then.

        Raises:
            ProtocolError: unknown item, not an assistant audio message, bad ``content_index``, or
                ``audio_end_ms`` beyond the item's audio (``invalid_value``, as OpenAI answers).
        """
        stored = self._require(item_id, event_id)
        item = stored.item
        content = item.get("content") or []
        if item.get("type") != "message" or item.get("role") != "assistant":
            raise ProtocolError("invalid_value", "Only assistant messages can be truncated.", param="item_id",
                                event_id=event_id)
        if not 0 <= content_index < len(content) or content[content_index].get("type") != "output_audio":
            raise ProtocolError("invalid_value", f"Content part {content_index} is not audio.",
                                param="content_index", event_id=event_id)
        if audio_end_ms > stored.audio_ms + 1e-6:
            raise ProtocolError("invalid_value",
                                f"Audio content of {stored.audio_ms:.0f}ms is already shorter than "
                                f"{audio_end_ms}ms", param="audio_end_ms", event_id=event_id)
        keep = int(audio_end_ms * bytes_per_ms)
        keep -= keep % (2 if bytes_per_ms > 8 else 1)  # whole PCM16 samples
        del stored.audio[keep:]
        stored.audio_ms = float(audio_end_ms)
        heard: list[str] = []
        for start, end, text in stored.segments:
            if end <= audio_end_ms:
                heard.append(text)
            elif start < audio_end_ms:
                words = text.split()
                frac = (audio_end_ms - start) / max(end - start, 1e-6)
                heard.append(" ".join(words[:int(len(words) * frac)]))
        stored.segments = [(s, min(e, audio_end_ms), t) for s, e, t in stored.segments if s < audio_end_ms]
        content[content_index]["transcript"] = " ".join(h for h in heard if h)

    def _require(self, item_id: str, event_id: str | None) -> StoredItem:
        stored = self.get(item_id)
        if stored is None:
            raise ProtocolError("invalid_value", f"Item with id '{item_id}' not found.", param="item_id",
                                event_id=event_id)
        return stored
