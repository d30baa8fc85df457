"""Text views of the client tree: an indented dendrogram and which workers share each layer."""

from __future__ import annotations

from collections.abc import Sequence

from coordinator.tree.clustering import ClientTree


def dendrogram(tree: ClientTree) -> list[str]:
    """Indented text dendrogram, root first; inner nodes show merge distance and size."""
    n = tree.n
    if n == 1:
        return [tree.leaves[0]]
    lines: list[str] = []

    def walk(node: int, prefix: str, last: bool, root: bool) -> None:
        branch = "" if root else ("└─ " if last else "├─ ")
        if node < n:
            lines.append(prefix + branch + tree.leaves[node])
            return
        merge = tree.merges[node - n]
        lines.append(f"{prefix}{branch}● d={merge.distance:.4g} ({merge.size} workers)")
        child_prefix = prefix if root else prefix + ("   " if last else "│  ")
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
