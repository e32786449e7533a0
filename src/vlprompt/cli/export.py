"""``vlprompt export``: write a trained prompt as an ONNX classifier (images in, class probabilities out)."""

from __future__ import annotations

import argparse

# As vlprompt.export's constants (not imported here: that module imports torch, and every CLI call registers every
# command; tests/export checks that the two agree).
FORMATS = ("onnx",)
CHECK_TOLERANCE = 1e-4
ONNX_INSTALL_HINT = "pip install 'vlprompt[onnx]'"

DESCRIPTION = (
    "Export the image encoder with the run's learned classifier baked in (CoOp, KgCoOp: fixed class weights) as "
    "one ONNX graph: input 'images' float32[batch, 3, S, S] (dynamic batch), preprocessed as "
    "PromptClassifier.preprocess does; output 'probs' float32[batch, C], the probabilities `vlprompt predict` "
    "gives. Beside FILE it writes FILE.json: class names, input/output names and shapes, the preprocessing "
    "(image size, mean, std, interpolation, resize mode and crop), backbone identity, method, exporter and opset. "
    f"The written graph is checked with onnxruntime (max |diff| <= {CHECK_TOLERANCE:g} on batches of 1 and 3) "
    "before it is kept. CoCoOp prompts are refused: their class weights depend on each image. Needs the onnx "
    f"extra: {ONNX_INSTALL_HINT}."
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` command."""
    p = sub.add_parser("export", help="export a trained prompt as an ONNX classifier (+ a JSON of preprocessing)",
                       description=DESCRIPTION)
    p.add_argument("--run", required=True, help="training run folder (holds learner.json)")
    p.add_argument("--out", required=True, help="the .onnx file to write (its description goes to FILE.json)")
    p.add_argument("--format", default="onnx", choices=FORMATS, help="export format (default onnx)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's own)")
    p.add_argument("--exporter", default="auto", choices=("auto", "dynamo", "torchscript"),
                   help="torch.onnx exporter: auto (dynamo, falling back to torchscript; default), dynamo, torchscript")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the onnxruntime comparison of the written graph")
    p.add_argument("--pretrained", default=None, help="where the backbone weights are now, if they moved")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``vlprompt export``."""
    from vlprompt.errors import ConfigError
    from vlprompt.export import check_out_path, check_run, export_onnx, load_for_export, require_onnx, sidecar_path

    if args.opset is not None and args.opset < 7:
        raise ConfigError(f"--opset must be ≥ 7, got {args.opset}.")
    # Cheap checks first, before the backbone is loaded; nothing is created until the export writes.
    require_onnx(args.check)
    check_run(args.run)
    check_out_path(args.out)
    clf = load_for_export(args.run, pretrained=args.pretrained)  # traced on the CPU
    meta = export_onnx(clf, args.out, opset=args.opset, exporter=args.exporter, check=args.check, source=args.run)
    ex, chk = meta["exporter"], meta["check"]
    print(f"{args.out}: {meta['method']} on {meta['backbone']['name']}, {meta['num_classes']} classes, input "
          f"{meta['input']['name']} {meta['input']['shape']}, {ex['name']} exporter, opset {ex['opset']}")
    print(f"{sidecar_path(args.out)}: class names and preprocessing")
    if chk:
        print(f"checked with {chk['runtime']}: max |diff| {chk['max_abs_diff']:.2g} on batches of "
              f"{', '.join(map(str, chk['batch_sizes']))}")
    return 0
