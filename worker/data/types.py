"""Core data types shared by the fedtree private-data layer."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Example"]


@dataclass(frozen=True)
class Example:
    """A single labelled text-classification example."""

    text: str
    label: str
