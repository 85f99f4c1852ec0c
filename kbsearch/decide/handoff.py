"""Hand-off messages: what the user is told when a human agent takes over, in the question's language."""

from __future__ import annotations

from kbsearch.codes import HandoffReason
from kbsearch.config import DecideSettings
from kbsearch.lexical.tokenize import has_cjk
from kbsearch.types import Handoff


def language_of(text: str) -> str:
    """``zh`` when the text contains CJK ideographs, else ``en`` (mixed questions count as Chinese)."""
    return "zh" if has_cjk(text) else "en"


def handoff_for(question: str, code: HandoffReason, reason: str, settings: DecideSettings) -> Handoff:
    """A hand-off in the question's language, with its code and the reason for people."""
    message = settings.handoff_message_zh if language_of(question) == "zh" else settings.handoff_message_en
    return Handoff(code=code, reason=reason, message=message)
