"""Text views of the client tree: an indented dendrogram and which workers share each layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from coordinator.tree.clustering import ClientTree


def dendrogram(tree: ClientTree, late: Mapping[int, Sequence[str]] | None = None) -> list[str]:
    """Indented text dendrogram, root first; inner nodes show merge distance and size. `late`
    hangs extra lines (late joiners) as dashed leaves under a node: node id -> labels."""
    n = tree.n
    late = late or {}
    lines: list[str] = []

    def dashed(node: int, prefix: str) -> None:
        lines.extend(f"{prefix}┄┄ {label}" for label in late.get(node, ()))

    if n == 1:
        lines.append(tree.leaves[0])
        dashed(0, "   ")
        return lines

    def walk(node: int, prefix: str, last: bool, root: bool) -> None:
        branch = "" if root else ("└─ " if last else "├─ ")
        child_prefix = prefix if root else prefix + ("   " if last else "│  ")
        if node < n:
            lines.append(prefix + branch + tree.leaves[node])
            dashed(node, child_prefix)
            return
        merge = tree.merges[node - n]
        lines.append(f"{prefix}{branch}● d={merge.distance:.4g} ({merge.size} workers)")
        dashed(node, child_prefix)
        walk(merge.left, child_prefix, False, False)
        walk(merge.right, child_prefix, True, False)

    walk(2 * n - 2, "", True, True)
    return lines


def layer_groups(clusters: Sequence[Sequence[Sequence[str]]]) -> list[str]:
    """One line per layer: its cluster count and the workers that share each adapter."""
    return [
        f"layer {layer:>2}: {len(groups)} cluster{'s' if len(groups) != 1 else ''}  "
        + "  ".join("{" + " ".join(group) + "}" for group in groups)
        for layer, groups in enumerate(clusters)
    ]
