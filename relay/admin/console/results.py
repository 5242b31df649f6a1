"""What a console page answers: a page to render, or a redirect (a dict is sent as JSON)."""

from __future__ import annotations

from attrs import frozen


@frozen
class Page:
    template: str
    values: dict
    status: int = 200
    headers: tuple = ()


@frozen
class Redirect:
    location: str
    headers: tuple = ()
