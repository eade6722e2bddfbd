"""What a config value accepts, and the one-sentence error when it does not.

Part of the configuration of Contrastive CutMix runs (Pan et al., "Enhanced
Long-Tailed Recognition with Contrastive CutMix Augmentation", IEEE TIP 2024;
``docs/method.md``). :class:`Rule` checks and parses one value against its kind,
choices or range; :class:`ConfigError` is the sentence naming the parameter, the
value and what is accepted. Both are re-exported by :mod:`ccmix.config.fields`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

_UNSET = object()


# --------------------------------------------------------------------------- errors


class ConfigError(ValueError):
    """A value that is not accepted. ``str(error)`` is one sentence naming the parameter, the value and what
    is accepted; the parts are attributes (``field``, ``value``, ``accepted``), so a front end can word the
    sentence its own way (``with_source``) without reading the text.

    ``ConfigError("free sentence")`` carries a ready-made sentence (``field`` is then None).
    """

    def __init__(self, message: str | None = None, *, field: str | None = None, value=_UNSET,
                 accepted: str | None = None, meaning: str = "", problem: str = "is not accepted",
                 detail: str | None = None, source: str = ""):
        self.field = field
        self.value = None if value is _UNSET else value
        self.has_value = value is not _UNSET
        self.accepted = accepted
        self.meaning = meaning
        self.problem = problem
        self.detail = detail
        self.source = source
        self._message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        if self._message is not None or self.field is None:
            return self._message or ""
        subject = f"{self.field}={shown_value(self.value)}" if self.has_value else repr(self.field)
        prefix = f"{self.source} " if self.source else ""
        if self.detail is not None:
            reason = self.detail
        else:
            meaning = f"is {self.meaning} and " if self.meaning else ""
            reason = f"{self.field} {meaning}must be {self.accepted}"
        return f"{prefix}{subject} {self.problem}; {reason}"

    def _render_traceback_(self) -> list[str]:
        # IPython and Jupyter (papermill's kernels too) show this instead of a traceback through ccmix: the sentence
        # is the whole story. Written out, not the ccmix.errors.ShownAsSentence mixin, as subclasses list that first.
        return [f"error: {self}"]

    def parts(self) -> dict:
        """Return the sentence's parts as a dict (field, value, accepted, problem, detail, source)."""
        return {"field": self.field, "value": self.value, "accepted": self.accepted, "problem": self.problem,
                "detail": self.detail, "source": self.source}

    def with_source(self, source: str, problem: str | None = None) -> ConfigError:
        """Return the same error worded for another front end, e.g. ``"overrides"`` or ``"--set"``."""
        if self.field is None:
            return self
        return ConfigError(field=self.field, value=self.value if self.has_value else _UNSET, accepted=self.accepted,
                           meaning=self.meaning, problem=problem or self.problem, detail=self.detail, source=source)

    def __reduce__(self):  # picklable across processes (keyword-only parts)
        return (_rebuild_error, (self._message, {**self.parts(), "meaning": self.meaning,
                                                 "value": self.value if self.has_value else _UNSET}))


def _rebuild_error(message, parts):
    return ConfigError(message, **parts) if message is not None else ConfigError(**parts)


def shown_value(value) -> str:
    """Return ``value`` as a sentence shows it: repr, with tuples as lists."""
    if isinstance(value, tuple):
        value = list(value)
    return repr(value)


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """What one value accepts: its kind, choices or range, whether None is allowed; checks and parses values.

    kind: ``int``, ``float``, ``bool``, ``str``, ``path`` (text naming a file or folder) or ``ints``
    (an increasing list of integers).
    """

    kind: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    optional: bool = False
    meaning: str = ""
    none_means: str = ""

    def accepted(self, non_finite: bool = False) -> str:
        """Return what the rule accepts as a noun phrase, e.g. "an integer >= 1" or "one of: a, b"."""
        if self.choices is not None:
            text = "one of: " + ", ".join(map(str, self.choices))
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind in ("str", "path"):
            text = "a path (text)" if self.kind == "path" else "text"
        else:
            noun = {"int": "an integer", "float": "a finite number" if non_finite else "a number",
                    "ints": "a list of increasing integers"}[self.kind]
            text = noun + self._range_text()
        if self.optional:
            text += " or None" + (f" ({self.none_means})" if self.none_means else "")
        return text

    def _range_text(self) -> str:
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            return f" in {int(low)}..{int(high)}" if self.kind == "int" else f" in [{low:g}, {high:g}]"
        if self.above is not None:
            return f" > {self.above:g}"
        if low is not None:
            return f" >= {low:g}"
        if high is not None:
            return f" <= {high:g}"
        return ""

    def error(self, name: str, value, source: str = "", problem: str = "is not accepted",
              non_finite: bool = False) -> ConfigError:
        """Return the ConfigError saying that ``value`` is not accepted for ``name``."""
        return ConfigError(field=name, value=value, accepted=self.accepted(non_finite=non_finite),
                           meaning=self.meaning, problem=problem, source=source)

    def check(self, name: str, value, source: str = ""):
        """Return ``value`` when the rule accepts it as it is (no conversion); raise ConfigError otherwise."""
        if value is None and self.optional:
            return value
        if self.choices is not None:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool) or value not in self.choices:
                raise self.error(name, value, source)
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise self.error(name, value, source)
        elif self.kind in ("str", "path"):
            if not isinstance(value, str) or (self.kind == "path" and not value):
                raise self.error(name, value, source)
        elif self.kind == "ints":
            if not isinstance(value, (tuple, list)) or not all(_is_int(v) for v in value):
                raise self.error(name, value, source)
            if any(b <= a for a, b in zip(value, value[1:])) or not all(self._in_range(v) for v in value):
                raise self.error(name, value, source)
        else:
            if not (_is_int(value) if self.kind == "int" else _is_number(value)):
                raise self.error(name, value, source)
            if not math.isfinite(value):
                raise self.error(name, value, source, non_finite=True)
            if not self._in_range(value):
                raise self.error(name, value, source)
        return value

    def _in_range(self, value) -> bool:
        return ((self.minimum is None or value >= self.minimum) and (self.maximum is None or value <= self.maximum)
                and (self.above is None or value > self.above))

    def coerce(self, name: str, value, source: str = ""):
        """Return ``value`` converted to the rule's kind (text is parsed, 5.0 -> 5, 5 -> 5.0) and checked;
        the error sentence shows the value as it was given."""
        given = value
        try:
            return self._coerce(name, value, source)
        except ConfigError as error:
            if error.field != name or not error.has_value or error.value is given or isinstance(given, str):
                raise
            raise ConfigError(field=name, value=given, accepted=error.accepted, meaning=error.meaning,
                              problem=error.problem, source=source) from None

    def _coerce(self, name: str, value, source: str):
        if isinstance(value, str) and self.kind not in ("str", "path"):
            value = self.parse(name, value, source=source, problem="is not accepted")
        elif value is not None and not isinstance(value, bool):
            if self.kind == "int" and isinstance(value, float) and value.is_integer():
                value = int(value)
            elif self.kind == "float" and isinstance(value, int):
                value = float(value)
            elif self.kind == "ints" and isinstance(value, list):
                value = tuple(value)
        if self.kind == "ints" and isinstance(value, tuple) and all(_is_number(v) and float(v).is_integer()
                                                                     for v in value):
            value = tuple(int(v) for v in value)
        if self.kind == "path" and isinstance(value, os.PathLike):
            value = os.fspath(value)
        return self.check(name, value, source=source)

    def parse(self, name: str, text: str, source: str = "--set", problem: str = "does not parse"):
        """Return ``text`` parsed to the rule's kind (fractions such as 20/255 for numbers); ConfigError if not."""
        stripped = text.strip()
        if self.optional and stripped.lower() in ("none", "null", ""):
            return None
        try:
            if self.kind == "bool":
                lowered = stripped.lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if self.kind == "int":
                return int(stripped)
            if self.kind == "float":
                if "/" in stripped:  # omega is written as a fraction in the papers, e.g. 20/255
                    numerator, denominator = stripped.split("/", 1)
                    return float(numerator) / float(denominator)
                return float(stripped)
            if self.kind == "ints":
                parts = [p for p in stripped.replace("[", "").replace("]", "").replace("(", "").replace(")", "")
                         .replace(" ", "").split(",") if p]
                return tuple(int(p) for p in parts)
            return text
        except (ValueError, ZeroDivisionError):
            accepted = self.accepted() + (" (fractions like 20/255 are fine)" if self.kind == "float" else "")
            raise ConfigError(field=name, value=text, accepted=accepted, meaning=self.meaning, problem=problem,
                              source=source) from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
