#!/usr/bin/env python3
"""PyTorch side of `sdp bench compare`: times the training steps Sdp times, on the same machine, and writes JSON.

The models are built here in plain PyTorch (no torchvision or transformers needed) with the shapes of Sdp's:
  llama-tiny  LLaMA preset "tiny": vocab 4096, hidden 256, MLP 688 (SwiGLU), 4 layers, 8 query / 4 key-value
              heads, RMSNorm eps 1e-5, RoPE theta 10000, untied head; AdamW; batch 8 x 128 tokens by default.
  resnet18    CIFAR ResNet-18, width 64 (3x3 stem, no max-pool, stages 64/128/256/512, BatchNorm, 10 classes);
              SGD momentum 0.9; batch 32 of 3x32x32 by default.
A step is forward, cross-entropy, backward and the optimizer step, timed after warm-up steps; the median is kept.

Run it with the thread count and OpenBLAS core you want Sdp compared at, for example:
  OPENBLAS_CORETYPE= python3 bench/torch_baseline.py --threads 2 --out torch.json
  sdp bench compare torch.json
Sdp reads the thread count, batch sizes and configurations from the JSON and times its own steps the same way.

On a machine whose speed comes and goes (a VM whose cores other tenants share), two runs a minute apart can differ
by a third. --lockstep SDP (the sdp executable) then times both sides in turn: after writing the JSON it starts
`sdp bench compare OUT --serve`, and for each step alternates one PyTorch step with one Sdp step (which goes first
alternates too), --samples pairs, and prints both medians with the median (min-max) of the per-pair ratios
Sdp / PyTorch; the pairs go into the JSON under "lockstep".
  OPENBLAS_CORETYPE= python3 bench/torch_baseline.py --threads 2 --out torch.json --lockstep src/Sdp.Cli/bin/Release/net10.0/sdp
"""
import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_llama(torch, nn, vocab=4096, hidden=256, mlp=688, layers=4, heads=8, kv_heads=4, eps=1e-5, theta=10000.0):
    head_dim = hidden // heads

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(hidden))

        def forward(self, x):
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def rope(x, cos, sin):
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
            self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
            self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
            self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)

        def forward(self, x, cos, sin, mask):
            b, t, _ = x.shape
            q = self.q_proj(x).view(b, t, heads, head_dim).transpose(1, 2)
            k = self.k_proj(x).view(b, t, kv_heads, head_dim).transpose(1, 2)
            v = self.v_proj(x).view(b, t, kv_heads, head_dim).transpose(1, 2)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            k = k.repeat_interleave(heads // kv_heads, dim=1)
            v = v.repeat_interleave(heads // kv_heads, dim=1)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim) + mask
            out = torch.softmax(scores, dim=-1) @ v
            return self.o_proj(out.transpose(1, 2).reshape(b, t, hidden))

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj = nn.Linear(hidden, mlp, bias=False)
            self.up_proj = nn.Linear(hidden, mlp, bias=False)
            self.down_proj = nn.Linear(mlp, hidden, bias=False)

        def forward(self, x):
            return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_layernorm, self.self_attn = RMSNorm(), Attention()
            self.post_attention_layernorm, self.mlp = RMSNorm(), Mlp()

        def forward(self, x, cos, sin, mask):
            x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
            return x + self.mlp(self.post_attention_layernorm(x))

    class Llama(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(vocab, hidden)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))
            self.norm = RMSNorm()
            self.lm_head = nn.Linear(hidden, vocab, bias=False)
            for p in self.parameters():
                if p.dim() > 1:
                    nn.init.normal_(p, std=0.02)

        def forward(self, ids):
            t = ids.shape[1]
            inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
            angles = torch.outer(torch.arange(t, dtype=torch.float32), inv)
            cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
            mask = torch.full((t, t), float("-inf")).triu(1)
            x = self.embed_tokens(ids)
            for layer in self.layers:
                x = layer(x, cos, sin, mask)
            return self.lm_head(self.norm(x))

    return Llama()


def build_resnet18(torch, nn, width=64, classes=10, channels=3):
    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))

    layers = [nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for stage in range(4):
        cout = width << stage
        for block in range(2):
            layers.append(Block(cin, cout, 2 if stage > 0 and block == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def time_steps(step, warmup, samples):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (Sdp uses the same)")
    parser.add_argument("--llama-batch", type=int, default=8)
    parser.add_argument("--llama-seq", type=int, default=128)
    parser.add_argument("--resnet-batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--lockstep", metavar="SDP", help="the sdp executable: also time PyTorch and Sdp steps in turn")
    args = parser.parse_args()
    if args.lockstep and not os.path.isfile(args.lockstep):
        parser.error(f"--lockstep: '{args.lockstep}' is not a file (expected the sdp executable)")

    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    steps = []

    llama = build_llama(torch, nn)
    adamw = torch.optim.AdamW(llama.parameters(), lr=1e-4)
    ids = torch.randint(0, 4096, (args.llama_batch, args.llama_seq + 1))

    def llama_step():
        adamw.zero_grad(set_to_none=True)
        logits = llama(ids[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        adamw.step()

    step_functions = {"llama-tiny": llama_step}
    times = time_steps(llama_step, args.warmup, args.samples)
    steps.append({"name": "llama-tiny", "model": "llama", "config": "tiny", "batch": args.llama_batch, "seq": args.llama_seq,
                  "optimizer": "adamw", "median_ms": statistics.median(times), "samples_ms": times})

    resnet = build_resnet18(torch, nn)
    sgd = torch.optim.SGD(resnet.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(args.resnet_batch, 3, 32, 32)
    labels = torch.randint(0, 10, (args.resnet_batch,))

    def resnet_step():
        sgd.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(resnet(images), labels)
        loss.backward()
        sgd.step()

    step_functions["resnet18-cifar"] = resnet_step
    times = time_steps(resnet_step, args.warmup, args.samples)
    steps.append({"name": "resnet18-cifar", "model": "resnet18", "config": "cifar", "batch": args.resnet_batch, "seq": 0,
                  "optimizer": "sgd", "momentum": 0.9, "median_ms": statistics.median(times), "samples_ms": times})

    result = {
        "format": "sdp.torch_baseline", "version": 1,
        "torch": torch.__version__, "python": sys.version.split()[0],
        "threads": args.threads, "cpu": cpu_name(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "torch_config": torch.__config__.show(),
        "warmup": args.warmup, "samples": args.samples,
        "steps": steps,
    }
    write_json(result, args.out)
    for s in steps:
        print(f"{s['name']:16} batch {s['batch']:3}  median {s['median_ms']:8.1f} ms")
    if args.lockstep:
        result["lockstep"] = lockstep(args.lockstep, args.out, step_functions, args.warmup, args.samples)
        write_json(result, args.out)


def write_json(result, path):
    """Atomically: a failed run leaves no half-written file."""
    temp = path + ".tmp"
    with open(temp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(temp, path)


def lockstep(sdp, json_path, step_functions, warmup, samples):
    """PyTorch and Sdp steps in turn, `samples` pairs per step; returns the pairs and prints the paired table."""
    server = subprocess.Popen([sdp, "bench", "compare", json_path, "--serve", "--warmup", str(warmup)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    try:
        ready = server.stdout.readline().strip()
        if ready != "ready":
            raise SystemExit(f"--lockstep: sdp did not start its step server (said {ready!r}; exit {server.poll()})")

        def sdp_step(name):
            server.stdin.write(name + "\n")
            server.stdin.flush()
            answer = server.stdout.readline().strip()
            try:
                return float(answer)
            except ValueError:
                raise SystemExit(f"--lockstep: sdp answered {answer!r} for step {name}")

        def torch_step(step):
            start = time.perf_counter()
            step()
            return (time.perf_counter() - start) * 1000.0

        out = {}
        print(f"\nlockstep: {samples} pairs per step, PyTorch and Sdp in turn (the first of each pair alternates)")
        print(f"{'step':18}{'PyTorch ms':>12}{'Sdp ms':>10}{'Sdp / PyTorch':>15}{'paired (min-max)':>26}")
        for name, step in step_functions.items():
            torch_ms, sdp_ms = [], []
            for i in range(samples):
                if i % 2 == 0:
                    torch_ms.append(torch_step(step))
                    sdp_ms.append(sdp_step(name))
                else:
                    sdp_ms.append(sdp_step(name))
                    torch_ms.append(torch_step(step))
            ratios = [s / t for s, t in zip(sdp_ms, torch_ms)]
            t_med, s_med, r_med = statistics.median(torch_ms), statistics.median(sdp_ms), statistics.median(ratios)
            out[name] = {"torch_ms": torch_ms, "sdp_ms": sdp_ms, "torch_median_ms": t_med, "sdp_median_ms": s_med,
                         "paired_ratio_median": r_med, "paired_ratio_min": min(ratios), "paired_ratio_max": max(ratios)}
            print(f"{name:18}{t_med:12.1f}{s_med:10.1f}{s_med / t_med:15.2f}{f'{r_med:.2f} ({min(ratios):.2f}-{max(ratios):.2f})':>26}")
        return out
    finally:
        server.stdin.close()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
