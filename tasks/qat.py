"""Quantization-aware training: torchao's pt2e flow with ExecuTorch's XNNPACK quantizer on a Kestrel network.

The quantized parts of a network are the parts INT8 export quantizes (every child module with weights but the
input's scaling, :data:`NOT_QUANTIZED`: SSDLite's backbone and head). Each is traced by
``torch.export`` (the batch size left open) and prepared by ``prepare_qat_pt2e``: convolutions and linear
layers get fake-quantized weights (int8, per output channel, symmetric) and activations (int8, per tensor), but
the first and the last ones (:data:`KEPT_IN_FLOAT`, as post-training INT8 by default), and
each batch norm stays in the graph beside its convolution, folded into the fake-quantized weight as the library
does (``_fuse_conv_bn_qat``), so that training sees the folded weights the INT8 file will hold. The network keeps
its class and its pre- and post-processing; its state dict keeps every parameter's name, plus the fake
quantizers' scales and observers' ranges, so a checkpoint resumes and loads like a float one.

:func:`convert` gives the INT8 network (``convert_pt2e``: batch norms folded, weights stored as int8 with the
learned scales), which every export format then writes without calibrating again.

The schedule follows torchao's QAT tutorial: the observers update the ranges while the weights move, then are
frozen (:func:`freeze_observers`), and the batch norms' running statistics are frozen before them
(:func:`freeze_batch_norms`), so the last steps train against fixed folded weights and fixed ranges, as the
INT8 file will run.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

#: the network's parts that INT8 quantizes (QAT and every INT8 export): every child module but the input's scaling
NOT_QUANTIZED = ("input",)
#: quantization a task can train with (``--model.quantization``)
QUANTIZATIONS = ("qat",)
#: convolutions QAT leaves in float, as post-training INT8 does by default: the first (on the image) and the last
#: ones (the predictions), where int8 costs the most accuracy and saves the least time
KEPT_IN_FLOAT = ("first_conv", "last_convs")
#: share of a QAT fine-tune's steps after which the batch norms' statistics, then the observers' ranges, stay as they
#: are: torchao's QAT tutorial's 3 and 4 of 10 epochs
FREEZE_BATCH_NORMS_AT = 0.3
FREEZE_OBSERVERS_AT = 0.4


def quantized_parts(network: nn.Module) -> list[str]:
    """The names of the children of ``network`` that INT8 quantizes: those with weights, but the input's scaling."""
    return [name for name, child in network.named_children()
            if name not in NOT_QUANTIZED and any(True for _ in child.parameters())]


def is_prepared(network: nn.Module) -> bool:
    """Whether ``network`` has fake quantization inside (:func:`prepare`)."""
    return getattr(network, "quantization", None) == "qat"


def is_converted(network: nn.Module) -> bool:
    """Whether ``network`` is a QAT network's INT8 version (:func:`convert`)."""
    return getattr(network, "quantization", None) == "int8"


def quantizer(qat: bool = True):
    """ExecuTorch's XNNPACK quantizer: int8 weights per output channel and int8 activations per tensor, symmetric;
    with ``qat``, fake quantizers that learn along with the weights."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))


_CONVOLUTIONS = (torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default, torch.ops.aten.conv_transpose2d.input,
                 torch.ops.aten.linear.default)


def end_convolutions(graph: torch.fx.GraphModule, last: bool) -> set[str]:
    """Names of the nodes of ``graph``'s convolutions (and linear layers) that no other one comes before or, with
    ``last``, after."""
    convolutions = {node for node in graph.graph.nodes if node.target in _CONVOLUTIONS}

    def reaches(node: torch.fx.Node) -> bool:
        seen, stack = set(), [node]
        while stack:
            current = stack.pop()
            for other in (current.users if last else current.all_input_nodes):
                if other in convolutions:
                    return True
                if other not in seen:
                    seen.add(other)
                    stack.append(other)
        return False

    return {node.name for node in convolutions if not reaches(node)}


def _part_inputs(network: nn.Module, example: torch.Tensor) -> dict[str, tuple[tuple, dict]]:
    """What each quantized part of ``network`` is called with when the network runs ``example`` in eval mode."""
    seen: dict[str, tuple[tuple, dict]] = {}
    hooks = []
    for name in quantized_parts(network):
        def record(module, args, kwargs, name=name):
            seen.setdefault(name, (args, kwargs))
        hooks.append(getattr(network, name).register_forward_pre_hook(record, with_kwargs=True))
    training = network.training
    try:
        with torch.no_grad():
            network.eval()(example)
    finally:
        network.train(training)
        for hook in hooks:
            hook.remove()
    return seen


#: the open units of a part's heights and widths (see :func:`_open_shapes`); 2 at least: a size of 1 would be special
_UNITS = (torch.export.Dim("height_unit", min=2), torch.export.Dim("width_unit", min=2))


def _open_shapes(value: Any, batch: torch.export.Dim, size: tuple[int, tuple[int, int]] | None) -> Any:
    """``dynamic_shapes`` for ``value`` (tensors, lists, tuples, dicts of them): the first axis of every tensor is
    ``batch``; with ``size`` ``(multiple, (height, width))`` (the network input's), the height and width of every
    4-d tensor too: each the multiple of one open unit that its stride from the network's input gives, the input's
    sides being ``multiple`` units."""
    if isinstance(value, torch.Tensor):
        dims: dict[int, Any] = {0: batch}
        if size is not None and value.dim() == 4:
            multiple, sides = size
            for axis, side, unit in zip((2, 3), sides, _UNITS):
                stride = side // value.shape[axis]
                if side % value.shape[axis] or multiple % stride:
                    raise ValueError(f"QAT cannot leave open the size of an input {tuple(value.shape)} (stride "
                                     f"{side}/{value.shape[axis]}): not a divisor of the network's size multiple "
                                     f"{multiple}")
                dims[axis] = unit * (multiple // stride) if multiple > stride else unit
        return dims
    if isinstance(value, (list, tuple)):
        return type(value)(_open_shapes(v, batch, size) for v in value)
    if isinstance(value, dict):
        return {k: _open_shapes(v, batch, size) for k, v in value.items()}
    return None


#: the batch-norm epsilon of torchao's QAT convolution + batch-norm pattern (torchao 0.18, ``qat_utils``: "TODO:
#: allow setting eps"), which prepare puts in place of every batch norm's own
PATTERN_EPS = 1e-5
#: where a mode-switched operation of an exported training graph holds its ``training`` flag
_MODE_ARGUMENT = {torch.ops.aten.batch_norm.default: 5, torch.ops.aten.dropout.default: 2}
_MOMENTUM_ARGUMENT = 6  # of aten.batch_norm.default


def _pattern_eps(part: nn.Module) -> None:
    """Each batch norm of ``part`` with :data:`PATTERN_EPS`, its running variance offset by the difference: in eval
    mode the same function, ``sqrt(var + eps)`` unchanged, where torchao's pattern would silently swap the eps."""
    with torch.no_grad():
        for norm in part.modules():
            if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.eps != PATTERN_EPS:
                norm.running_var.add_(norm.eps - PATTERN_EPS)
                norm.eps = PATTERN_EPS


def _set_argument(node: torch.fx.Node, index: int, value: Any) -> None:
    node.args = (*node.args[:index], value, *node.args[index + 1:])


def _batch_norms(graph: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [node for node in graph.graph.nodes if node.target is torch.ops.aten.batch_norm.default]


def _train(self: torch.fx.GraphModule, mode: bool = True) -> torch.fx.GraphModule:
    """``train(mode)`` of a prepared part: its batch norms (and dropouts) switched by their ``training`` flag alone,
    their momentum and eps kept (torchao's ``allow_exported_model_train_eval`` rewrites them with its pattern's
    defaults)."""
    nn.Module.train(self, mode)
    changed = False
    for node in self.graph.nodes:
        index = _MODE_ARGUMENT.get(node.target)
        if index is not None and node.args[index] != mode:
            _set_argument(node, index, mode)
            changed = True
    if changed:
        self.recompile()
    return self


def _eval(self: torch.fx.GraphModule) -> torch.fx.GraphModule:
    return self.train(False)


def _switchable(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``graph`` whose ``train()`` and ``eval()`` are :func:`_train` (pt2e's graphs refuse both)."""
    graph.train = types.MethodType(_train, graph)
    graph.eval = types.MethodType(_eval, graph)
    return graph


def prepare(network: nn.Module, example: torch.Tensor) -> nn.Module:
    """Put fake quantization into ``network`` (in place; returned): each of its quantized parts becomes its
    ``torch.export`` graph prepared for QAT, traced on what it receives when the network runs ``example`` (uint8
    images, at least two: a batch of one would fix the batch size). The network's mode (train or eval) is kept."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    if is_prepared(network):
        return network
    if example.shape[0] < 2:
        raise ValueError("prepare needs an example batch of at least 2 images: one would fix the batch size")
    training = network.training
    batch = torch.export.Dim("batch", min=1)
    parts = _part_inputs(network, example)  # in the order the network calls them
    # a network that trains on crops of another size than it evaluates (segmentation) says by what its input size
    # is a multiple: its parts' heights and widths stay open, as multiples of that
    multiple = getattr(network, "size_multiple", None)
    size = (multiple, tuple(next(iter(parts.values()))[0][0].shape[-2:])) if multiple else None
    for index, (name, (args, kwargs)) in enumerate(parts.items()):
        part = getattr(network, name).train()
        _pattern_eps(part)
        shapes = _open_shapes((args, kwargs), batch, size)
        graph = torch.export.export(part, args, kwargs, dynamic_shapes=shapes if kwargs else shapes[0],
                                    strict=False).module()
        momenta = [node.args[_MOMENTUM_ARGUMENT] for node in _batch_norms(graph)]
        float_nodes = set()
        if index == 0 and "first_conv" in KEPT_IN_FLOAT:
            float_nodes |= end_convolutions(graph, last=False)
        if index == len(parts) - 1 and "last_convs" in KEPT_IN_FLOAT:
            float_nodes |= end_convolutions(graph, last=True)
        prepared = prepare_qat_pt2e(graph, quantizer(qat=True).set_filter_function(
            lambda node, float_nodes=float_nodes: node.name not in float_nodes))
        norms = _batch_norms(prepared)
        if len(norms) != len(momenta):
            raise RuntimeError(f"QAT preparation of {name} left {len(norms)} of its {len(momenta)} batch norms")
        for node, momentum in zip(norms, momenta):  # the pattern's default, 0.1, replaced by each norm's own
            _set_argument(node, _MOMENTUM_ARGUMENT, momentum)
        prepared.recompile()
        setattr(network, name, _switchable(prepared))  # .train() / .eval() switch its batch norms
    network.quantization = "qat"
    return network.train(training)


def convert(network: nn.Module, fold_weights: bool = True) -> nn.Module:
    """The INT8 network of a prepared one (``convert_pt2e`` on a copy of each quantized part: batch norms folded,
    weights int8 with the scales learned), in eval mode; ``network`` is not changed."""
    import copy

    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    if not is_prepared(network):
        raise ValueError("convert takes a network prepared for QAT (tasks.qat.prepare)")
    converted = copy.deepcopy(network).eval()
    for name in quantized_parts(network):
        part = _sizes_traceable(convert_pt2e(copy.deepcopy(getattr(network, name)), fold_quantize=fold_weights))
        setattr(converted, name, _switchable(part).eval())
    converted.quantization = "int8"
    return converted


def float_transposed_convolutions(network: nn.Module) -> nn.Module:
    """A copy of a converted network (:func:`convert`) whose transposed convolutions read float weights: each weight
    dequantized once, from the int8 values and scales QAT learned, so the numbers are the ones it trained with.
    XNNPACK runs no INT8 transposed convolution (ExecuTorch 1.5.1 leaves its per-channel ``dequantize`` outside the
    delegate, which the runtime then lacks: "Missing out variants"), so an ExecuTorch file runs them in float.
    """
    import copy

    transposed = {torch.ops.aten.conv_transpose2d.input, torch.ops.aten.conv_transpose1d.default}
    network = copy.deepcopy(network)
    for name in quantized_parts(network):
        part = getattr(network, name)
        graph = getattr(part, "graph", None)
        if graph is None:
            continue
        changed = False
        for node in list(graph.nodes):
            weight = node.args[1] if node.op == "call_function" and node.target in transposed else None
            if not (isinstance(weight, torch.fx.Node) and "dequantize_per_channel" in str(weight.target)
                    and all(isinstance(a, torch.fx.Node) and a.op == "get_attr" for a in weight.args[:3])):
                continue
            values = [part.get_buffer(a.target) if a.target in dict(part.named_buffers()) else getattr(part, a.target)
                      for a in weight.args[:3]]
            dequantized = weight.target(*values, *weight.args[3:])
            attribute = f"{node.name}_float_weight"
            part.register_buffer(attribute, dequantized)
            with graph.inserting_before(node):
                node.replace_input_with(weight, graph.get_attr(attribute))
            changed = True
        if changed:
            graph.eliminate_dead_code()
            part.recompile()
    return network


def _size(tensor: torch.Tensor, dim: int) -> int:
    return tensor.size(dim)


def _tensor_method(tensor: torch.Tensor, name: str, *args: Any) -> torch.Tensor:
    return getattr(tensor, name)(*args)


def _sizes_traceable(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``graph`` with its reads of an open size (the batch's: ``aten.sym_size``) as ``Tensor.size`` calls, and the
    operations that take such a size (``view``, ``reshape``) as the tensor's methods: the ONNX exporter's tracer
    records those as operations on the input's shape, where it freezes an operator's result and an operator's
    arguments to the traced example's numbers (the ONNX file keeps the batch size open). ``torch.export`` traces
    both spellings alike."""
    sizes = [node for node in graph.graph.nodes
             if node.op == "call_function" and node.target is torch.ops.aten.sym_size.int]
    for size in sizes:
        size.target = _size
        for user in list(size.users):
            if isinstance(user.target, torch._ops.OpOverload) and not user.kwargs:
                name = user.target.overloadpacket.__name__
                if hasattr(torch.Tensor, name):
                    user.args = (user.args[0], name, *user.args[1:])
                    user.target = _tensor_method
    graph.recompile()
    return graph


def size_like(network: nn.Module, state: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Give the fake quantizers' and observers' buffers of a prepared ``network`` the sizes they have in ``state`` (its
    keys under ``prefix``): per-channel ones are empty until their first observation, so that a freshly prepared
    network's shapes differ from a trained one's until it loads them."""
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase
    from torchao.quantization.pt2e.observer import ObserverBase

    for name, module in network.named_modules():
        if isinstance(module, (FakeQuantizeBase, ObserverBase)):
            for buffer_name, buffer in module.named_buffers(recurse=False):
                saved = state.get(f"{prefix}{name}.{buffer_name}")
                if saved is not None and saved.shape != buffer.shape:
                    buffer.resize_(saved.shape)


def _fake_quantizers(network: nn.Module) -> Iterator[nn.Module]:
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    return (m for m in network.modules() if isinstance(m, FakeQuantizeBase))


def freeze_observers(network: nn.Module) -> int:
    """Stop the fake quantizers' observers: the ranges (scales) stay as they are. Returns how many."""
    count = 0
    for fake in _fake_quantizers(network):
        fake.disable_observer()
        count += 1
    return count


def freeze_batch_norms(network: nn.Module) -> int:
    """Freeze the running statistics of the batch norms inside the prepared parts (their momentum set to 0, as
    torchao's QAT tutorial does): they keep normalizing batches as in training. Returns how many were not yet."""
    count = 0
    for name in quantized_parts(network):
        graph = getattr(network, name)
        norms = [node for node in _batch_norms(graph) if node.args[_MOMENTUM_ARGUMENT] != 0.0]
        for node in norms:
            _set_argument(node, _MOMENTUM_ARGUMENT, 0.0)
        if norms:
            graph.recompile()
        count += len(norms)
    return count


def follow_schedule(network: nn.Module, progress: float) -> list[str]:
    """Freeze what the schedule says at ``progress`` (the share of the fine-tune's steps done): the batch norms from
    :data:`FREEZE_BATCH_NORMS_AT`, the observers from :data:`FREEZE_OBSERVERS_AT`. Idempotent (a resumed run calls it
    again). Returns what it froze now, for the log."""
    frozen = []
    if progress >= FREEZE_BATCH_NORMS_AT and freeze_batch_norms(network):
        frozen.append("batch-norm statistics")
    if progress >= FREEZE_OBSERVERS_AT and any(bool(f.observer_enabled) for f in _fake_quantizers(network)):
        freeze_observers(network)
        frozen.append("quantization ranges")
    return frozen
