#!/usr/bin/python3
"""PyTorch reference for the book's three Fashion-MNIST models.

What this is: an OPTIONAL script that trains the ANN, the basic CNN or the
deeper CNN of shared PROTOCOL.md with PyTorch on the CPU, on the same data
and with the same protocol as the C programs (Glorot-uniform init, zero
biases, Adam 1e-3 / 0.9 / 0.999 / eps 1e-7, batch 64, the last 6,000
training images for validation, pixels / 255, a seeded shuffle every epoch,
optional early stopping with best-weights restore), so that their accuracy
and speed can be compared on the same machine. It ends with a `result ...`
line in the C programs' format.

What it is not: part of the build or of the tests (the C project has no
Python dependency); a bit-for-bit replica of the C programs (the random
numbers differ, so accuracies agree only to within run-to-run noise); a
downloader (it reads the four uncompressed IDX files from --data).

See README.md beside it. Example:
    python3 tests/reference/pytorch_reference.py --model basic --epochs 10
"""
import argparse
import os
import struct
import sys
import time

import numpy as np

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--model", choices=["ann", "basic", "deeper"], default="basic")
p.add_argument("--epochs", type=int, default=10)
p.add_argument("--patience", type=int, default=0,
               help="early stopping on validation loss (0 = off)")
p.add_argument("--seed", type=int, default=1)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
               help="CNNs in torch.channels_last (oneDNN's fastest CPU path)")
p.add_argument("--keras-bn", action="store_true",
               help="Keras-style BatchNorm (biased running variance) instead of PyTorch's own, "
                    "which is faster and differs only in the running variance's count/(count-1)")
p.add_argument("--tune", action=argparse.BooleanOptionalAction, default=True,
               help="run PyTorch at its best: malloc tuned, OpenBLAS's core overrides unset, "
                    "ATen's AVX-512 kernels where the CPU has them (--no-tune: the environment as it is)")
p.add_argument("--limit", type=int, default=0, help="train on the first N images only")
p.add_argument("--bf16", action="store_true",
               help='mixed precision: the forward pass and the loss under torch.autocast("cpu", '
                    'dtype=torch.bfloat16) (book.md, chapter 8, part 2); weights and Adam stay fp32')
p.add_argument("--data", default="data", help="directory holding the four IDX files")
args = p.parse_args()

# PyTorch at its best, which needs the environment before the process starts
# (glibc reads its malloc tunables at start-up, OpenBLAS and ATen theirs when
# torch is imported), so the script starts itself again with it:
# - glibc's malloc must not map and unmap every large tensor each step;
# - OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, which some machines set to work
#   around old OpenBLAS bugs, would slow a current one;
# - ATen uses its AVX-512 kernels only when asked.
TUNED_MALLOC = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


def has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return False
    return all(x in flags for x in ("avx512f", "avx512bw", "avx512vl", "avx512dq"))


if args.tune and os.environ.get("PYTORCH_REFERENCE_TUNED") != "1":
    env = dict(os.environ, GLIBC_TUNABLES=TUNED_MALLOC, PYTORCH_REFERENCE_TUNED="1")
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    if has_avx512():
        env.setdefault("ATEN_CPU_CAPABILITY", "avx512")
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

# Threads must be fixed before torch is imported. OpenMP (used by oneDNN's
# convolutions and torch's own kernels) gets N; OpenBLAS (the dense layers'
# matrix products) runs on the calling thread so the two do not oversubscribe.
os.environ["OMP_NUM_THREADS"] = str(args.threads)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(args.threads)


def read_idx(path):
    """An uncompressed IDX file as a numpy uint8 array of its stated shape."""
    with open(path, "rb") as f:
        raw = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        sys.exit(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(kind):
    x = read_idx(os.path.join(args.data, f"{kind}-images-idx3-ubyte"))
    y = read_idx(os.path.join(args.data, f"{kind}-labels-idx1-ubyte"))
    x = torch.from_numpy(x.astype(np.float32) / 255).unsqueeze(1)  # (n,1,28,28)
    return x, torch.from_numpy(y.astype(np.int64))


class KerasBatchNorm(nn.Module):
    """BatchNorm as Keras does it: the batch's biased variance both for
    normalising and for the running average (torch's own keeps the unbiased
    one, larger by count/(count-1): 1.6% for the dense layer's 64, nothing
    for the convolutions' 64*28*28). momentum 0.01 here = 0.99 in Keras."""

    def __init__(self, n, eps=1e-3, momentum=0.01):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                dims = [d for d in range(x.dim()) if d != 1]
                var, mean = torch.var_mean(x, dim=dims, unbiased=False)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
        # With no running stats given, training=True normalises by the batch's
        # own (biased) statistics in one fused kernel.
        return F.batch_norm(x, None if self.training else self.running_mean,
                            None if self.training else self.running_var,
                            self.weight, self.bias, self.training, 0.0, self.eps)


def bn(n, dims):
    if args.keras_bn:
        return KerasBatchNorm(n)
    return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(n, eps=1e-3, momentum=0.01)


def build(name):
    if name == "ann":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(),
                             nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)), 109_386
    if name == "basic":
        return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(1600, 128), nn.ReLU(),
                             nn.Linear(128, 10)), 225_034

    def block(cin, cout):  # conv (bias kept, as in Keras) -> BN -> ReLU
        return [nn.Conv2d(cin, cout, 3, padding=1), bn(cout, 2), nn.ReLU()]
    return nn.Sequential(*block(1, 32), *block(32, 32), nn.MaxPool2d(2), nn.Dropout(0.25),
                         *block(32, 64), *block(64, 64), nn.MaxPool2d(2), nn.Dropout(0.25),
                         nn.Flatten(), nn.Linear(3136, 256), bn(256, 1), nn.ReLU(),
                         nn.Dropout(0.5), nn.Linear(256, 10)), 872_426


def glorot(model):
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)  # fan_in/out include the kernel area, as Keras
            nn.init.zeros_(m.bias)


def evaluate(model, x, y, fmt):
    """Mean loss and accuracy in inference mode (BN running stats, no dropout)."""
    model.eval()
    loss = correct = 0.0
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            logits = model(x[i:i + 1000].contiguous(memory_format=fmt))
            loss += F.cross_entropy(logits, y[i:i + 1000], reduction="sum").item()
            correct += (logits.argmax(1) == y[i:i + 1000]).sum().item()
    return loss / len(x), correct / len(x)


def main():
    print(f"torch {torch.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")
    print(f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
          f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}")
    print("environment:", ", ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in (
        "GLIBC_TUNABLES", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "ATEN_CPU_CAPABILITY")),
        "" if args.tune else "(--no-tune: as it was)")
    print(f"batch norm: {'Keras-style (--keras-bn)' if args.keras_bn else 'PyTorch nn.BatchNorm'}; "
          f"precision: {'bf16 autocast (--bf16)' if args.bf16 else 'fp32'}")
    for line in torch.__config__.show().splitlines():  # the fast paths compiled in
        if "MKL-DNN" in line or "BLAS" in line and "Build settings" not in line:
            print("config:", line.strip())
        if "Build settings" in line:  # one long line: keep its BLAS and oneDNN items
            print("config:", ", ".join(s.strip() for s in line.split(",")
                                      if "BLAS" in s or "MKLDNN" in s or "LAPACK" in s))
    with open("/proc/self/maps") as f:  # which libblas Debian's alternatives picked
        libs = sorted({ln.split()[-1] for ln in f if "blas" in ln.split()[-1]})
    print("BLAS loaded:", ", ".join(libs) or "none found",
          "" if any("openblas" in s for s in libs) else "(NOT OpenBLAS: expect ~10x slower dense layers)")
    print(f"oneDNN (mkldnn) available: {torch.backends.mkldnn.is_available()}")

    x, y = load("train")
    x_test, y_test = load("t10k")
    x_train, y_train, x_val, y_val = x[:-6000], y[:-6000], x[-6000:], y[-6000:]
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    n = len(x_train)

    torch.manual_seed(args.seed)  # the weights and dropout masks
    model, expected = build(args.model)
    glorot(model)
    fmt = torch.channels_last if args.channels_last and args.model != "ann" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    total = sum(t.numel() for t in model.state_dict().values()) - \
        sum(t.numel() for k, t in model.state_dict().items() if k.endswith("num_batches_tracked"))
    trainable = sum(t.numel() for t in model.parameters())
    print(f"model {args.model}: {total:,} parameters ({trainable:,} trainable), expected {expected:,}"
          f" -> {'ok' if total == expected else 'MISMATCH'}; memory format {fmt}")
    if total != expected:
        sys.exit(1)
    print(f"train {n}, validation {len(x_val)}, test {len(x_test)}; batch 64, "
          f"up to {args.epochs} epochs, patience {args.patience or 'off'}, seed {args.seed}")

    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
    shuffler = torch.Generator().manual_seed(args.seed)
    best_loss, best_state, best_epoch, waited, train_times = float("inf"), None, 0, 0, []
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=shuffler)
        loss_sum = correct = 0.0
        t0 = time.perf_counter()
        for i in range(0, n, 64):
            idx = order[i:i + 64]
            xb = x_train[idx].contiguous(memory_format=fmt)
            yb = y_train[idx]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
        train_times.append(time.perf_counter() - t0)  # training alone, no validation
        val_loss, val_acc = evaluate(model, x_val, y_val, fmt)
        print(f"epoch {epoch}/{args.epochs}  train loss {loss_sum / n:.4f} accuracy {100 * correct / n:.2f}%  "
              f"validation loss {val_loss:.4f} accuracy {100 * val_acc:.2f}%  "
              f"train {train_times[-1]:.1f}s, {n / train_times[-1]:.0f} images/s", flush=True)
        if args.patience:
            if val_loss < best_loss:
                best_loss, best_epoch, waited = val_loss, epoch, 0
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                waited += 1
                if waited >= args.patience:
                    print(f"early stop: no improvement for {waited} epochs")
                    break
    seconds = time.perf_counter() - start  # training and validation, as the C programs count it
    if best_state is not None:
        model.load_state_dict(best_state)
        print(f"restored the best weights, from epoch {best_epoch} (validation loss {best_loss:.4f})")

    test_loss, test_acc = evaluate(model, x_test, y_test, fmt)
    print(f"test loss {test_loss:.4f} accuracy {100 * test_acc:.2f}%")
    print(f"result model={args.model}{' precision=bf16' if args.bf16 else ''} epochs={len(train_times)} seed={args.seed} "
          f"test_loss={test_loss:.4f} test_accuracy={test_acc:.4f} seconds={seconds:.1f}")
    # The first epoch warms caches and allocators (and oneDNN's kernel choice):
    # it is left out of the speed figures when there are others.
    timed = train_times[1:] or train_times
    mean = sum(timed) / len(timed)
    print(f"train_seconds_per_epoch={mean:.2f} best={min(timed):.2f} "
          f"images_per_second={n / mean:.0f} best_images_per_second={n / min(timed):.0f} "
          f"(epochs {'2-' + str(len(train_times)) if len(train_times) > 1 else '1'})")


if __name__ == "__main__":
    main()
