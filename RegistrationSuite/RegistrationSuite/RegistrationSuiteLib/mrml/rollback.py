"""Put nodes back as they were when writing a result fails half-way (or a run is abandoned).

Used by every write of results into the scene (in-process ``register`` and the child-process runner): passed
output nodes are snapshotted before they are written, nodes created meanwhile are recorded, and
:meth:`NodeRollback.restore` undoes both, so a failed or cancelled run leaves every node as it was.
"""

from __future__ import annotations

from contextlib import contextmanager


class NodeRollback:
    """Snapshot nodes before writing results into them; :meth:`restore` puts them back and removes the
    nodes created meanwhile (:meth:`created`). Snapshots hold the content (``CopyContent``: voxels, matrices,
    grids, table columns, attributes), the registration references and the parent transform."""

    def __init__(self, scene, nodes=()):
        import slicer

        self.scene = scene
        self._roles = (slicer.vtkMRMLTransformNode.GetFixedNodeReferenceRole(),
                       slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole())
        self._snapshots = []
        self._created = []
        for node in nodes:
            if node is not None and node.GetScene() is not None:
                self._snapshots.append(self._snapshot(node))

    def _snapshot(self, node):
        copy = node.CreateNodeInstance()
        copy.CopyContent(node)
        refs = {role: [node.GetNthNodeReferenceID(role, i) for i in range(node.GetNumberOfNodeReferences(role))]
                for role in self._roles}
        parent = node.GetTransformNodeID() if hasattr(node, "GetTransformNodeID") else None
        return node, copy, refs, parent

    def add(self, node) -> None:
        """Snapshot one more node before it is written (nodes already snapshotted are skipped)."""
        if node is not None and node.GetScene() is not None and all(node is not n for n, *_ in self._snapshots):
            self._snapshots.append(self._snapshot(node))

    def created(self, node):
        """Record a node this run added (removed by :meth:`restore`); returns it."""
        if node is not None:
            self._created.append(node)
        return node

    def restore(self) -> None:
        for node in self._created:
            if node.GetScene() is not None:
                self.scene.RemoveNode(node)
        for node, copy, refs, parent in self._snapshots:
            node.CopyContent(copy)
            for role, ids in refs.items():
                node.RemoveNodeReferenceIDs(role)
                for node_id in ids:
                    node.AddNodeReferenceID(role, node_id)
            if hasattr(node, "SetAndObserveTransformNodeID"):
                node.SetAndObserveTransformNodeID(parent)


@contextmanager
def rollback_on_error(scene, nodes=()):
    """``with rollback_on_error(scene, [passed output nodes]) as rollback:`` write results, recording new
    nodes with ``rollback.created(node)``; any exception restores the nodes and removes the new ones."""
    rollback = NodeRollback(scene, nodes)
    try:
        yield rollback
    except BaseException:
        rollback.restore()
        raise
