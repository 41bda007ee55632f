"""Request bodies from an endpoint's templates.

Templates are compiled once, when the configuration is loaded, and rendered in Jinja2's
immutable sandbox with undefined variables as errors. The variables of a row: ``userId``,
``alertMessage``, every extra column by its name (and all of them as ``extra``),
``alert_id``, ``file`` (the name it was dropped under) and ``line``. A JSON body must parse
as JSON once rendered; a form body is the ``fields`` rendered and URL-encoded. Without a
template the body is hookdrop's own JSON (built by the notifier), so nothing is stored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from jinja2 import StrictUndefined, Template, TemplateError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_ENV.policies["json.dumps_kwargs"] = {"ensure_ascii": False, "sort_keys": False}
# The variable holding the values of ${VAR} in a template (see hookdrop/endpoints/config.py).
ENV_VARIABLE = "hookdrop_env"
MAX_BODY = 1 << 20  # characters of a rendered body (or of one form field)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class RenderError(ValueError):
    """A row whose body cannot be rendered; the message says why (a row error)."""


class Renderer:
    """The compiled templates of one endpoint."""

    def __init__(
        self,
        fmt: str = "json",
        body: str | None = None,
        fields: tuple[tuple[str, str], ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.format = fmt
        self._env = dict(env or {})
        self._body = _compile(body) if body is not None else None
        self._fields = [(name, _compile(text)) for name, text in fields]
        # Every variable the templates name, to say which one a row lacks.
        self._names: set[str] = set()
        for text in [body or "", *(text for _name, text in fields)]:
            self._names |= meta.find_undeclared_variables(_ENV.parse(text)) - _ENV.globals.keys()
        self._names.discard(ENV_VARIABLE)
        if self._body is not None and not self._names:
            # The same for every row: a body that is not JSON is refused now, not per row.
            try:
                self.render(user_id="", message="", extra=None, alert_id="", file="", line=0)
            except RenderError as exc:
                raise ValueError(str(exc)) from None

    @property
    def templated(self) -> bool:
        """False: the default body, built when sent."""
        return self._body is not None or bool(self._fields)

    def render(
        self,
        *,
        user_id: str,
        message: str,
        extra: Mapping[str, object] | None,
        alert_id: str,
        file: str,
        line: int,
    ) -> bytes | None:
        """The body for one row, or None for the default body; RenderError if it fails."""
        if not self.templated:
            return None
        variables: dict[str, Any] = dict(extra or {})
        variables.update(
            userId=user_id,
            alertMessage=message,
            extra=dict(extra or {}),
            alert_id=alert_id,
            file=file,
            line=line,
        )
        missing = sorted(self._names - variables.keys())
        if missing:
            columns = ", ".join(sorted(extra or {})) or "none besides the user and the message"
            raise RenderError(
                f"the template uses {missing[0]!r}, which this row does not have "
                f"(its extra columns: {columns})"
            )
        variables[ENV_VARIABLE] = self._env
        try:
            if self._body is not None:
                text = _render(self._body, variables)
                try:
                    json.loads(text, parse_constant=_no_constant)
                except ValueError as exc:
                    raise RenderError(f"the body template did not give valid JSON: {exc}") from None
                return text.encode("utf-8", "surrogatepass")
            pairs = [(name, _render(template, variables)) for name, template in self._fields]
            return urlencode(pairs, encoding="utf-8", errors="surrogatepass").encode("ascii")
        except RenderError:
            raise
        except RecursionError:
            raise RenderError("the template cannot be rendered: it recurses too deeply") from None
        except MemoryError:
            raise RenderError("the template cannot be rendered: out of memory") from None
        except (TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as exc:
            raise RenderError(f"the template cannot be rendered: {exc}") from None


def _render(template: Template, variables: dict[str, Any]) -> str:
    """Rendered piece by piece, stopping as soon as it is more than MAX_BODY."""
    parts: list[str] = []
    size = 0
    for part in template.generate(variables):
        size += len(part)
        if size > MAX_BODY:
            raise RenderError(f"the body is too large (over {MAX_BODY} characters)")
        parts.append(part)
    return "".join(parts)


def _compile(text: str) -> Template:
    try:
        return _ENV.from_string(text)
    except TemplateError as exc:
        raise ValueError(f"the template does not compile: {exc}") from None
