"""The ONNX contract of design.md §6: what TensorRT and other runtimes may rely on."""

from __future__ import annotations

import onnx
from onnx import helper, shape_inference

from export_models import INPUT_SIZE, ONNX_BATCH, small_model
from segstream.engines.checkpoint import save_checkpoint
from segstream.commands.export import main as export_main

K = 20  # conftest: max_detections


def _io(graph_values):
    return {
        v.name: (v.type.tensor_type.elem_type, [d.dim_value for d in v.type.tensor_type.shape.dim])
        for v in graph_values
    }


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_inputs_and_outputs_have_the_contract_names_dtypes_and_static_shapes(onnx_file):
    graph = onnx.load(onnx_file).graph
    h, w = INPUT_SIZE
    b = ONNX_BATCH
    f32, i32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
    assert _io(graph.input) == {"images": (f32, [b, 3, h, w]), "image_sizes": (i32, [b, 2])}
    outputs = _io(graph.output)
    assert list(outputs) == ["num_detections", "boxes", "scores", "classes", "masks"]
    assert outputs == {
        "num_detections": (i32, [b]),
        "boxes": (f32, [b, K, 4]),
        "scores": (f32, [b, K]),
        "classes": (i32, [b, K]),
        "masks": (f32, [b, K, 28, 28]),
    }


def test_custom_nodes_carry_domain_and_attributes_the_plugins_register(onnx_file):
    model = onnx.load(onnx_file)
    assert {(o.domain, o.version) for o in model.opset_import} >= {("segstream", 1), ("", 17)}
    custom = [n for n in model.graph.node if n.domain == "segstream"]
    assert sorted(n.op_type for n in custom) == ["BatchedNMS", "BatchedNMS", "MultilevelRoIAlign", "MultilevelRoIAlign"]
    nms = [_attrs(n) for n in custom if n.op_type == "BatchedNMS"]
    # RPN: NMS over levels at IoU 0.7 down to post_nms_top_n; box head: per class, the model's thresholds.
    assert nms[0]["iou_threshold"] == 0.699999988079071 and nms[0]["max_outputs"] == 150
    assert abs(nms[1]["iou_threshold"] - 0.5) < 1e-7 and abs(nms[1]["score_threshold"] - 0.05) < 1e-7
    assert nms[1]["max_outputs"] == K
    for node in custom:
        if node.op_type == "BatchedNMS":
            assert len(node.input) == 3 and len(node.output) == 5
    pools = [_attrs(n) for n in custom if n.op_type == "MultilevelRoIAlign"]
    assert [p["output_size"] for p in pools] == [7, 14]
    for p in pools:
        assert p["spatial_scales"] == [0.25, 0.125, 0.0625, 0.03125]
        assert (p["sampling_ratio"], p["aligned"], p["canonical_scale"], p["canonical_level"]) == (2, 0, 224.0, 4)
    for node in custom:
        if node.op_type == "MultilevelRoIAlign":
            assert len(node.input) == 2 + 4 and len(node.output) == 1


def test_graph_has_no_control_flow_or_data_dependent_shapes(onnx_file):
    model = onnx.load(onnx_file)
    onnx.checker.check_model(model)
    graph = model.graph
    ops = {n.op_type for n in graph.node}
    assert not ops & {"Loop", "If", "Scan", "NonZero", "NonMaxSuppression", "Unique", "Compress"}
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    topk = [n for n in graph.node if n.op_type == "TopK"]
    assert len(topk) == 4  # one per FPN level in the RPN
    assert all(n.input[1] in constants for n in topk), "TopK's k must be a constant"


def test_export_command_writes_the_graph_for_a_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("segstream.engines.artifacts.cache_root", lambda: tmp_path / "cache")
    model = small_model(seed=7)
    checkpoint = save_checkpoint(tmp_path / "random.safetensors", model.network.state_dict(), model.config)
    out = tmp_path / "exported.onnx"
    code = export_main(["onnx", "--model", str(checkpoint), "--input-size", "192x256", "--batch", "1", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert str(out) in capsys.readouterr().out
    io = _io(onnx.load(out).graph.input)
    assert io["images"][1] == [1, 3, 192, 256]


def test_export_command_rejects_bad_input_in_one_line(tmp_path, capsys):
    assert export_main(["onnx", "--model", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("segstream export:") and "\n" not in err


def _value_types(model):
    graph = shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


F32, F16, I32 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT32


def test_custom_node_tensors_have_the_dtypes_the_plugins_accept(onnx_file):
    model = onnx.load(onnx_file)
    types = _value_types(model)
    for node in model.graph.node:
        ins, outs = [types[i] for i in node.input if i], [types[o] for o in node.output if o]
        if node.op_type == "BatchedNMS":
            assert (ins, outs) == ([F32, F32, I32], [I32, I32, F32, F32, I32]), node.name
        if node.op_type == "MultilevelRoIAlign":
            assert (ins, outs) == ([F32, I32] + [F32] * 4, [F32]), node.name


def test_fp16_export_runs_trunk_in_half_and_keeps_the_contract(tmp_path):
    from segstream.engines.export import export_onnx
    from segstream.engines.tensorrt_build import graph_precision

    path = export_onnx(small_model(seed=2), tmp_path / "half.onnx", 1, precision="fp16")
    model = onnx.load(path)
    onnx.checker.check_model(model)
    types = _value_types(model)
    io = _io(model.graph.input) | _io(model.graph.output)
    assert {name: t for name, (t, _) in io.items()} == {
        "images": F32, "image_sizes": I32, "num_detections": I32, "boxes": F32, "scores": F32, "classes": I32,
        "masks": F32,
    }
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm")]
    assert convs and all(types[n.input[1]] == F16 for n in convs)
    for node in model.graph.node:
        ins = [types[i] for i in node.input if i]
        if node.op_type in ("TopK", "Softmax"):
            assert ins[0] == F32, node.name  # selection and scores in float32
        if node.op_type == "BatchedNMS":
            assert ins == [F32, F32, I32], node.name
        if node.op_type == "MultilevelRoIAlign":
            assert ins == [F32, I32] + [F16] * 4 and types[node.output[0]] == F16, node.name
    assert graph_precision(path.read_bytes()) == "fp16"
