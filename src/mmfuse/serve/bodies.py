"""Request bodies read so that invalid UTF-8 is refused naming the field, never guessed at.

Starlette reads a JSON body with `json.loads(bytes)`, which fails on the first invalid byte (a
generic 400 without a field), and decodes a multipart text part as Latin-1 when it is not UTF-8
(the model would silently read mojibake). Here both keep each invalid byte as a lone surrogate
(`surrogateescape`), and the text check every string input passes (`media.clean_text`) refuses
it with a 422 naming the field — the same answer as for a lone surrogate escaped in JSON.

Used through `StrictRoute` (FastAPI's documented hook for a custom Request class). The multipart
part leans on Starlette's MultiPartParser internals (`_current_part`, `items`, `_get_form`);
tests/test_hostile_server.py fails if a Starlette upgrade changes them.
"""
from __future__ import annotations

import json
from contextlib import aclosing
from typing import Any, Callable

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser, parse_options_header


class _StrictParts(MultiPartParser):
    """Text parts as UTF-8 (what browsers send), invalid bytes kept as lone surrogates."""

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is not None:
            super().on_part_end()
            return
        self.items.append((part.field_name, bytes(part.data).decode("utf-8", "surrogateescape")))


class StrictRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(body)
            except UnicodeDecodeError:
                self._json = json.loads(body.decode("utf-8", "surrogateescape"))
        return self._json

    async def _get_form(self, **options: Any) -> FormData:
        content_type, _ = parse_options_header(self.headers.get("Content-Type"))
        if self._form is None and content_type == b"multipart/form-data":
            try:
                async with aclosing(self.stream()) as stream:
                    self._form = await _StrictParts(self.headers, stream, **options).parse()
            except MultiPartException as error:
                raise HTTPException(400, error.message) from None
        return await super()._get_form(**options)


class StrictRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictRequest(request.scope, request.receive))

        return strict
