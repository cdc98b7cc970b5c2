"""Times the ORIGINAL PyTorch seemore / seeMoE on this machine, for bench/bench.ts --compare-original.

The model code is imported, unmodified, from the reference folder (default: the copy vendored in
tests/fixtures/reference/seemore-pytorch), built with the original's configuration and fed a random
batch of the shapes bench.ts passes (by default the original's: batch 16 images of 3 x 96 x 96,
captions of 49 characters, 50 decoder positions with the image token).

Device: --device auto is the original's own choice (its module global `device`: cuda when torch sees
a GPU, else cpu); cpu or cuda force one. The chosen device is written into that module global, which
the original's forward and generate read, and the model and batch are moved there. On CUDA each timer
stops after torch.cuda.synchronize(). --device cuda without a GPU prints one JSON line
{"error": ...} and exits with status 4.

  /usr/bin/python3 bench/original_step.py [--model seemore|seemoe] [--size original|tiny]
                                          [--batch 16] [--caption 49] [--device auto|cpu|cuda]
                                          [--reference PATH] [--threads N] [--rounds 7]
      prints one JSON line: the device (and GPU), the batch shapes, medians (ms), the process's peak
      RSS (MiB) and, on CUDA, torch's peak allocated GPU memory (MiB)
  /usr/bin/python3 bench/original_step.py --serve [...]
      reads commands from stdin, one per line, and answers each with one JSON line:
        threads N   torch.set_num_threads(N)          -> {"threads": N}
        train       one Adam step (model.train())     -> {"ms": ...}
        forward     logits, eval mode, no_grad        -> {"ms": ...}
        generate    model.generate(image, idx, 40), batch 1, eval mode, as the original's notebooks
                    call it (autograd on)             -> {"ms": ..., "tokens": 40}
        rss         peak resident memory (VmHWM)      -> {"peak_rss_mib": ..., "peak_cuda_mib": ...}
                    (peak_cuda_mib: torch.cuda.max_memory_allocated; null on the CPU)
        quit
      After start-up it prints {"ready": true, ...} with torch's version, its default thread count,
      the device (and GPU name, else null) and the batch and caption length of the batch it times.

Needs Debian's python3-torch (with python3-torchvision, python3-pandas, python3-pil, which the
original imports): apt-get install python3-torch python3-torchvision python3-pandas python3-pil
"""

import argparse
import contextlib
import json
import statistics
import sys
import time
import types
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = REPO_ROOT / "tests" / "fixtures" / "reference" / "seemore-pytorch"  # vendored, MIT
INSTALL_HINT = "apt-get install python3-torch python3-torchvision python3-pandas python3-pil"

# The original's configuration (seemore.py's globals; seeMoE.py's __main__ block).
CONFIG = dict(n_embd=128, image_embed_dim=512, n_head=8, n_layer=8, num_blks=3, img_size=96,
              patch_size=16, dropout=0.1, emb_dropout=0.1, blk_dropout=0.1,
              num_experts=8, top_k=2, learning_rate=1e-3)
# A few-second configuration for tests of the benchmark itself (same as bench.ts --size tiny).
TINY = dict(CONFIG, n_embd=16, image_embed_dim=32, n_head=2, n_layer=1, num_blks=1, img_size=32,
            num_experts=4)
GENERATE_TOKENS = 40
EXIT_NO_DEVICE = 4


def import_original(reference, model_type):
    """Imports seemore.py or seeMoE.py from `reference` (both read ./input.txt at import time)."""
    reference = Path(reference).resolve()
    name = "seemore" if model_type == "seemore" else "seeMoE"
    for f in (f"{name}.py", "input.txt"):
        if not (reference / f).is_file():
            raise FileNotFoundError(f"{reference / f}: not found (is --reference right?)")
    sys.modules.setdefault("mlflow", types.ModuleType("mlflow"))  # seeMoE imports it, uses it only to log
    sys.path.insert(0, str(reference))
    with contextlib.chdir(reference):
        module = __import__(name)
    if model_type == "seemoe":  # defined only under seeMoE's __main__; Expert reads `dropout`
        module.dropout = CONFIG["dropout"]
        module.learning_rate = CONFIG["learning_rate"]
    return module


def choose_device(torch, module, requested):
    """The device to run on: the original's own choice for "auto"; None where "cuda" has no GPU."""
    if requested == "auto":
        return str(module.device)
    if requested == "cuda" and not torch.cuda.is_available():
        return None
    return requested


def build_model(module, model_type, c):
    import torch.nn as nn
    from torch.nn import init

    args = (c["n_embd"], c["image_embed_dim"], module.vocab_size, c["n_layer"], c["img_size"],
            c["patch_size"], c["n_head"], c["num_blks"], c["emb_dropout"], c["blk_dropout"])
    if model_type == "seemore":
        return module.VisionLanguageModel(*args)
    model = module.VisionMoELanguageModel(*args, c["num_experts"], c["top_k"])
    # seeMoE's __main__ applies kaiming_normal_ to every Linear weight
    model.apply(lambda m: init.kaiming_normal_(m.weight) if isinstance(m, nn.Linear) else None)
    return model


class Bench:
    """The original model, its optimizer and one fixed random batch."""

    def __init__(self, module, model_type, config, batch, caption, device):
        import torch

        self.torch = torch
        self.device = device
        module.device = device  # the original's forward and generate put their own tensors there
        torch.manual_seed(1337)
        self.model = build_model(module, model_type, config).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config["learning_rate"])
        vocab = module.vocab_size
        size = config["img_size"]
        # Drawn on the CPU, then moved: the same batch on either device.
        self.images = torch.randn(batch, 3, size, size).to(device)  # (B, 3, H, W)
        self.idx = torch.randint(0, vocab - 1, (batch, caption)).to(device)  # (B, T)
        self.targets = torch.randint(0, vocab, (batch, caption)).to(device)  # (B, T)
        self.one_image = self.images[:1]  # (1, 3, H, W)
        self.prompt = torch.zeros((1, 1), dtype=torch.long, device=device)  # (1, 1)

    def describe(self):
        """The device, its GPU's name (None on the CPU) and the batch's shapes, as timed."""
        cuda = self.device == "cuda"
        return {
            "device": self.device,
            "gpu": self.torch.cuda.get_device_name() if cuda else None,
            "batch": self.images.shape[0],
            "caption": self.idx.shape[1],
        }

    def elapsed_ms(self, t0):
        """Milliseconds since t0, once the GPU (if any) has finished the work queued so far."""
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1000

    def train(self):
        self.model.train()
        t0 = time.perf_counter()
        self.optimizer.zero_grad()
        _, loss = self.model(self.images, self.idx, self.targets)
        loss.backward()
        self.optimizer.step()
        loss.item()
        return self.elapsed_ms(t0)

    def forward(self):
        self.model.eval()
        t0 = time.perf_counter()
        with self.torch.no_grad():
            self.model(self.images, self.idx).sum().item()
        return self.elapsed_ms(t0)

    def generate(self):
        self.model.eval()
        t0 = time.perf_counter()
        out = self.model.generate(self.one_image, self.prompt, GENERATE_TOKENS)
        ms = self.elapsed_ms(t0)
        return ms, out.shape[1] - self.prompt.shape[1]

    def peak_cuda_mib(self):
        """torch's peak allocated GPU memory (MiB); None on the CPU."""
        if self.device != "cuda":
            return None
        return self.torch.cuda.max_memory_allocated() / 2**20


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def serve(bench):
    torch = bench.torch
    ready = {"ready": True, "torch": torch.__version__, "default_threads": torch.get_num_threads()}
    print(json.dumps({**ready, **bench.describe()}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "quit":
            break
        if cmd[0] == "threads":
            torch.set_num_threads(int(cmd[1]))
            reply = {"threads": torch.get_num_threads()}
        elif cmd[0] == "train":
            reply = {"ms": bench.train()}
        elif cmd[0] == "forward":
            reply = {"ms": bench.forward()}
        elif cmd[0] == "generate":
            ms, tokens = bench.generate()
            reply = {"ms": ms, "tokens": tokens}
        elif cmd[0] == "rss":
            reply = {"peak_rss_mib": peak_rss_mib(), "peak_cuda_mib": bench.peak_cuda_mib()}
        else:
            reply = {"error": f"unknown command {cmd[0]!r}"}
        print(json.dumps(reply), flush=True)


def standalone(bench, rounds, threads):
    torch = bench.torch
    if threads:
        torch.set_num_threads(threads)
    bench.train(), bench.forward(), bench.generate()  # warm-up
    train = [bench.train() for _ in range(rounds)]
    forward = [bench.forward() for _ in range(rounds)]
    generate = [bench.generate()[0] for _ in range(rounds)]
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **bench.describe(),
        "train_step_ms": statistics.median(train),
        "forward_ms": statistics.median(forward),
        "generate_ms": statistics.median(generate),
        "peak_rss_mib": peak_rss_mib(),
        "peak_cuda_mib": bench.peak_cuda_mib(),
    }))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["seemore", "seemoe"], default="seemore")
    ap.add_argument("--size", choices=["original", "tiny"], default="original")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--caption", type=int, default=49)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto: the original's own choice (cuda when torch sees a GPU)")
    ap.add_argument("--reference", default=str(DEFAULT_REFERENCE))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--serve", action="store_true")
    args = ap.parse_args()
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401  (the original imports these at the top)
        import pandas  # noqa: F401
        import PIL  # noqa: F401
    except ImportError as e:
        print(json.dumps({"error": f"{e}; install with: {INSTALL_HINT}"}), flush=True)
        sys.exit(3)
    import torch

    config = CONFIG if args.size == "original" else TINY
    module = import_original(args.reference, args.model)
    device = choose_device(torch, module, args.device)
    if device is None:
        print(json.dumps({"error": f"--device cuda: torch {torch.__version__} sees no CUDA GPU "
                                   "(torch.cuda.is_available() is False); use --device cpu or auto"}),
              flush=True)
        sys.exit(EXIT_NO_DEVICE)
    bench = Bench(module, args.model, config, args.batch, args.caption, device)
    if args.serve:
        serve(bench)
    else:
        standalone(bench, args.rounds, args.threads)


if __name__ == "__main__":
    main()
