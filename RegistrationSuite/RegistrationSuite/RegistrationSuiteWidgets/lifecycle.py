"""The parameter-node and scene lifecycle of a module widget (Slicer's scripted module template), shared.

Every RegistrationSuite module widget did the same on ``enter``/``exit``, on scene close and on ``cleanup``;
:class:`ParameterNodeWidgetMixin` holds that code once. The widget keeps what differs between modules:
``setup`` (it calls :meth:`~ParameterNodeWidgetMixin.observeSceneClose`), ``initializeParameterNode`` (the
preselection of inputs), ``setParameterNode`` (``connectGui`` and module-specific resets) and ``_checkCanApply``.
List the mixin before ``ScriptedLoadableModuleWidget`` in the bases, so that its ``cleanup`` replaces the base's
empty one; it defines no ``__init__``.
"""

import slicer
import vtk


class ParameterNodeWidgetMixin:
    """``cleanup``, ``enter``, ``exit`` and the scene-close observers of a widget that shows a parameter node.

    The widget provides ``self._parameterNode``, ``self._parameterNodeGuiTag``, ``initializeParameterNode()``,
    ``setParameterNode(node)``, ``_checkCanApply(caller=None, event=None)``, ``self.parent`` (``isEntered``),
    ``VTKObservationMixin`` and ``ChildRunMixin._abandonRun()``.
    """

    def observeSceneClose(self) -> None:
        """Called from ``setup``: a closing scene stops a running registration and releases the parameter
        node; once closed, a new parameter node is taken if the module is shown."""
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

    def cleanup(self) -> None:
        """The module is unloaded: stop a running registration and every observation."""
        self._abandonRun()
        self.removeObservers()

    def enter(self) -> None:
        """The module is shown: make sure a parameter node exists and is shown."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """The module is hidden: the GUI stops following the parameter node (a run goes on)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self._abandonRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()
