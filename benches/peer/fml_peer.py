#!/usr/bin/env python3
"""fml_peer.py owns the PyTorch (eager) peer of fml: the same encoder, parameter split, multi-level
face model, point-based image formation layer, losses and AdaDelta training step, written with
idiomatic torch ops, plus benchmark commands that write the same JSON schemas as `fml bench`.

It needs only the Python standard library and torch (no numpy, no safetensors package), so it runs
on a machine that has PyTorch and nothing else. f32 throughout; TF32 off unless --tf32 (fml's
default is full f32 as well).

How each part mirrors the Rust sources (same math, same shapes, same parameter counts):

- config.rs -> load_config(): TOML via tomllib, the same sections, keys and defaults; unknown keys
  are errors naming the file (serde's deny_unknown_fields). [augment] is accepted and ignored (the
  benchmarks train on synthetic crops without augmentation).
- encoder.rs -> Encoder: 5 convolutions [out, kernel, stride, pad, pool?] with ReLU, AlexNet's
  overlapping 3x3/2 max-pooling (F.max_pool2d(x, 3, 2) = fml's separable pool, floor mode, no
  padding), hidden fully connected layers with ReLU, linear head; input scaled x*2-1. He-normal
  init (std sqrt(2 / fan_in)), zero biases, zero head. The random values come from torch's
  generator, not fml's xoshiro stream: identical shapes and distributions, different draws.
- network/params.rs -> ParamLayout: x = [z_shape | z_expr | z_albedo | 27 SH | 3 rotation |
  3 translation | C geometry correctives | C reflectance correctives]; gamma = light * x + neutral
  (neutral: 1/H0 on each channel's band 0), rotation = rotation_scale * x,
  translation = translation_scale * x + default_translation.
- network/mod.rs -> default_translation(): centre the mean face's 68-landmark box in the crop with
  its larger side covering landmark_fill of the width.
- face_model/format.rs -> read_safetensors()/load_face_model(): a ~20-line safetensors reader
  (struct + json + torch.frombuffer). Models without reflectance or skin mask (fml derives them)
  must first be re-saved with `fml model import --format native`, which writes every array.
- face_model/multilevel.rs -> FaceNet: bases pre-multiplied by their std, so the encoder
  regresses z-scores; v^b = mean + z_s B_s + z_e B_e, r^b = mean + z_r B_r ([B, 3N] matmuls);
  correctives Theta_g, Theta_r are [C, 3N] parameters initialised N(0, init_std^2) (default 0),
  and the corrective-coefficient rows of the head N(0, head_std^2).
- render/camera.rs, layer.rs, reference.rs, ops/*.rs -> Renderer: R = Rz(roll) Ry(yaw) Rx(pitch),
  v_cam = v R^T + t; area-weighted vertex normals (cross products scattered with index_add_,
  normalised with sqrt(|n|^2 + 1e-20)); SH shading with sh.rs's constants; projection
  u = cx + f x / max(-z, near), v = cy - f y / max(-z, near); bilinear sampling with pixel centres
  at +0.5 (F.grid_sample, align_corners=False, which is exactly that convention; the literal
  gather-based mirror of reference.rs is sample_gather(), used by selfcheck to show they agree);
  visibility = facing (n . -v > 0) x sampleable (depth > near and u, v in [0.5, size - 0.5]) x
  face region, detached; photometric l2,1 per image (eq. 9) with sqrt(|d|^2 + 1e-12).
- loss/sparse.rs -> Objective.sparse(): fixed landmarks plus sliding contour points 0..7 / 9..16
  re-picked every step as the candidate closest to the camera ray through the detection (base
  level, current pose, not differentiated); E_sparse = sum_f c_f |f - u_f|^2 / |F|.
- loss/regularizers.rs -> statistical (sum of squared z-scores, geometry and reflectance parts),
  smoothness (directed 1-ring edges weighted 1/|N_i|, / N), stabilisation (/ N), chroma weights
  exp(-beta |chroma_i - chroma_j|) from detached samples with both ends visible, local reflectance
  sparsity ((|r_i - r_j|^2 + 1e-8)^(p/2)), global skin constancy over `glo_partners` random
  partners per skin vertex (drawn with torch's generator: same count and rule, other draws).
- loss/mod.rs -> Objective.compute(): the same terms and weights; each term is a batch mean and
  the total is the weighted sum of the terms whose weight is non-zero.
- train/adadelta.rs, train/trainer.rs -> torch.optim.Adadelta (its update is Caffe's:
  E[g^2], delta = sqrt(E[dx^2] + eps) / sqrt(E[g^2] + eps) g, E[dx^2], theta -= lr delta) with the
  three learning-rate groups (encoder, geometry correctives, reflectance correctives). Like fml's
  trainer, each step reads the loss back to the host and fails on a non-finite value.

Commands:
  python3 fml_peer.py bench-infer --config C --model M.safetensors --device cuda|cpu --json OUT
  python3 fml_peer.py bench-train --config C --model M --stage pretrain|finetune --batch B
                                  --steps N --device cuda|cpu --json OUT
  python3 fml_peer.py selfcheck   (float64 gradcheck of the renderer, zero head = mean face, ...)
  python3 fml_peer.py crosscheck --run RUN --dataset D.fmlds --model M [--init RUN0]
                                  (the peer's loss terms and first AdaDelta step vs an fml run's)
"""

import argparse
import json
import math
import os
import statistics
import struct
import sys
import tempfile
import time

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

import torch
import torch.nn as nn
import torch.nn.functional as F


class PeerError(Exception):
    """Bad input: printed as `error: ...` without a traceback."""


# ---------------------------------------------------------------------------------------------
# Configuration (src/config.rs, src/encoder.rs EncoderConfig::default, network/params.rs)
# ---------------------------------------------------------------------------------------------

DEFAULTS = {
    "model": {"path": "demo", "shape_modes": None, "expr_modes": None, "albedo_modes": None},
    "data": {"dataset": ""},
    "camera": {"focal": 1000.0, "near": 10.0, "landmark_fill": 1.0 / 1.3},
    "encoder": {
        "input_size": 240,
        "conv": [[96, 11, 4, 0, 1], [256, 5, 1, 2, 1], [384, 3, 1, 1, 0], [384, 3, 1, 1, 0], [256, 3, 1, 1, 1]],
        "fc": [4096, 4096],
    },
    "params": {"rotation": 1.0, "translation": [10.0, 10.0, 100.0], "light": 1.0},
    "correctives": {"count": 500, "init_std": [0.0, 0.0], "head_std": 0.01, "scale": [100.0, 10.0]},
    "loss": {
        "photo": 1.0,
        "sparse": 1e-2,
        "std_geometry": 2e-4,
        "std_albedo": 2e-4,
        "smo": 0.05,
        "ref_sparsity": 0.01,
        "ref_beta": 50.0,
        "ref_p": 0.9,
        "glo": 0.5,
        "glo_partners": 6,
        "sta": 1e-3,
    },
    "optim": {"rho": 0.95, "eps": 1e-6, "lr_encoder": 0.01, "lr_geometry": 0.005, "lr_reflectance": 0.01},
    "train": {
        "steps": 200000,
        "batch": 5,
        "seed": 1,
        "val_every": 1000,
        "val_batches": 20,
        "checkpoint_every": 1000,
        "device": "auto",
        "backend": "fast",
        "correctives": False,
    },
}


def feature_size(enc):
    """Channels and side of the feature map after the convolutions (EncoderConfig::feature_size)."""
    s, c = enc["input_size"], 3
    for i, (out, k, stride, pad, pool) in enumerate(enc["conv"]):
        if stride == 0 or s + 2 * pad < k:
            raise PeerError(f"encoder conv{i + 1} (kernel {k}) does not fit a {s}x{s} input")
        s = (s + 2 * pad - k) // stride + 1
        if pool == 1:
            if s < 3:
                raise PeerError(f"encoder pool after conv{i + 1} needs at least 3x3, has {s}x{s}")
            s = (s - 3) // 2 + 1
        c = out
    return c, s


def load_config(path):
    """The effective config: the file's sections over the defaults, checked like Config::validate."""
    if tomllib is None:
        raise PeerError("reading TOML needs Python 3.11 or newer (tomllib)")
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise PeerError(f"{path}: {e.strerror}")
    except tomllib.TOMLDecodeError as e:
        raise PeerError(f"{path}: not valid TOML: {e}")
    cfg = {k: dict(v) for k, v in DEFAULTS.items()}
    for section, values in raw.items():
        if section == "augment":
            continue  # training-time augmentation: not part of the benchmarked step
        if section not in DEFAULTS:
            raise PeerError(f"{path}: unknown section [{section}]")
        if not isinstance(values, dict):
            raise PeerError(f"{path}: {section} must be a table")
        for key, v in values.items():
            if key not in DEFAULTS[section]:
                raise PeerError(f"{path}: unknown field `{key}` in [{section}]")
            cfg[section][key] = v
        if section == "encoder":
            # EncoderConfig has no serde(default): a present [encoder] must give every field.
            for key in DEFAULTS["encoder"]:
                if key not in values:
                    raise PeerError(f"{path}: [encoder] is missing field `{key}`")
    try:
        validate_config(cfg)
    except PeerError as e:
        raise PeerError(f"{path}: {e}")
    except (TypeError, ValueError) as e:
        raise PeerError(f"{path}: a value has the wrong type ({e})")
    return cfg


def validate_config(cfg):
    if cfg["train"]["batch"] <= 0:
        raise PeerError("train.batch must be positive")
    o = cfg["optim"]
    if not (0.0 <= o["rho"] < 1.0) or o["eps"] <= 0.0:
        raise PeerError(f"optim.rho must be in [0, 1) and optim.eps positive (got {o['rho']} / {o['eps']})")
    cam = cfg["camera"]
    if cam["focal"] <= 0 or cam["near"] <= 0 or cam["landmark_fill"] <= 0:
        raise PeerError("camera.focal, camera.near and camera.landmark_fill must be positive")
    enc = cfg["encoder"]
    if len(enc["conv"]) != 5:
        raise PeerError(f"encoder.conv must list 5 convolutions (modified AlexNet), got {len(enc['conv'])}")
    for i, spec in enumerate(enc["conv"]):
        if len(spec) != 5 or any((not isinstance(x, int)) or x < 0 for x in spec):
            raise PeerError(f"encoder.conv[{i}] must be [out, kernel, stride, pad, pool] non-negative integers")
    feature_size(enc)
    if not (0.0 <= cfg["loss"]["ref_p"] <= 2.0):
        raise PeerError(f"loss.ref_p = {cfg['loss']['ref_p']} is outside (0, 2]")
    for name in ("photo", "sparse", "std_geometry", "std_albedo", "smo", "ref_sparsity", "glo", "sta"):
        w = cfg["loss"][name]
        if not (w >= 0.0 and math.isfinite(w)):
            raise PeerError(f"loss.{name} = {w} must be a non-negative number")
    if cfg["correctives"]["count"] < 0:
        raise PeerError("correctives.count must not be negative")


# ---------------------------------------------------------------------------------------------
# Face model file (src/face_model/format.rs)
# ---------------------------------------------------------------------------------------------

_ST_DTYPES = {"F32": (torch.float32, 4), "F64": (torch.float64, 8), "F16": (torch.float16, 2),
              "I32": (torch.int32, 4), "I64": (torch.int64, 8), "U32": (torch.int32, 4)}


def read_safetensors(path):
    """{name: tensor} and the metadata of a safetensors file (little-endian host assumed)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PeerError(f"{path}: {e.strerror}")
    if len(data) < 8:
        raise PeerError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PeerError(f"{path}: bad safetensors header: {e}")
    meta = header.pop("__metadata__", None) or {}
    out = {}
    for name, info in header.items():
        if info.get("dtype") not in _ST_DTYPES:
            raise PeerError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
        dtype, size = _ST_DTYPES[info["dtype"]]
        shape, (a, b) = info["shape"], info["data_offsets"]
        count = math.prod(shape)
        if b - a != count * size or 8 + n + b > len(data):
            raise PeerError(f"{path}: tensor {name!r} has a bad data range {a}..{b} for shape {shape}")
        if count == 0:
            t = torch.empty(0, dtype=dtype)
        else:
            t = torch.frombuffer(bytearray(data[8 + n + a:8 + n + b]), dtype=dtype)
        if info["dtype"] == "U32":
            t = t.to(torch.int64) & 0xFFFFFFFF
        out[name] = t.reshape(shape)
    return out, meta


class FaceModelData:
    """The base model on the CPU (FaceModel): float32 arrays [N,3] / [K,N,3] / [K], int64 indices."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    @property
    def num_vertices(self):
        return self.mean_shape.shape[0]

    def truncate(self, shape=None, expr=None, albedo=None):
        for k, (basis, std, name) in {"shape": ("shape_basis", "shape_std", "shape"),
                                      "expr": ("expr_basis", "expr_std", "expression"),
                                      "albedo": ("albedo_basis", "albedo_std", "albedo")}.items():
            keep = {"shape": shape, "expr": expr, "albedo": albedo}[k]
            if keep is None:
                continue
            have = getattr(self, std).shape[0]
            if keep > have:
                raise PeerError(f"cannot keep {keep} {name} modes: the model has {have}")
            setattr(self, std, getattr(self, std)[:keep].contiguous())
            setattr(self, basis, getattr(self, basis)[:keep].contiguous())


def load_face_model(path):
    """Load and check a native model (the checks of format::from_bytes / FaceModel::validate)."""
    t, meta = read_safetensors(path)

    def get(name, ints=False):
        if name not in t:
            hint = ""
            if name in ("mean_albedo", "albedo_basis", "albedo_std", "skin_mask"):
                hint = " (fml derives it; re-save the model with `fml model import --format native IN -o OUT`)"
            raise PeerError(f"{path}: missing tensor {name!r}{hint}")
        x = t[name]
        if ints:
            if x.is_floating_point():
                raise PeerError(f"{path}: {name} has a float dtype, expected an integer type")
            x = x.to(torch.int64)
            if x.numel() and int(x.min()) < 0:
                raise PeerError(f"{path}: {name} holds a negative index")
            return x
        if not x.is_floating_point():
            raise PeerError(f"{path}: {name} has an integer dtype, expected a float type")
        x = x.to(torch.float32)
        if x.numel() and not bool(torch.isfinite(x).all()):
            raise PeerError(f"{path}: {name} holds NaN or infinite values")
        return x

    mean_shape = get("mean_shape")
    if mean_shape.dim() != 2 or mean_shape.shape[1] != 3 or mean_shape.shape[0] == 0:
        raise PeerError(f"{path}: mean_shape has shape {list(mean_shape.shape)}, expected [N, 3]")
    n = mean_shape.shape[0]

    def basis(b, s):
        std = get(s)
        if std.dim() != 1:
            raise PeerError(f"{path}: {s} has shape {list(std.shape)}, expected [K]")
        bas = get(b)
        if list(bas.shape) != [std.shape[0], n, 3]:
            raise PeerError(f"{path}: {b} has shape {list(bas.shape)}, expected [{std.shape[0]}, {n}, 3]")
        if std.numel() and bool((std <= 0).any()):
            raise PeerError(f"{path}: {s} has a value that is not positive")
        return bas, std

    shape_basis, shape_std = basis("shape_basis", "shape_std")
    expr_basis, expr_std = basis("expr_basis", "expr_std")
    mean_albedo = get("mean_albedo")
    if list(mean_albedo.shape) != [n, 3]:
        raise PeerError(f"{path}: mean_albedo has shape {list(mean_albedo.shape)}, expected [{n}, 3]")
    albedo_basis, albedo_std = basis("albedo_basis", "albedo_std")
    triangles = get("triangles", ints=True)
    if triangles.dim() != 2 or triangles.shape[1] != 3 or triangles.shape[0] == 0:
        raise PeerError(f"{path}: triangles has shape {list(triangles.shape)}, expected [F, 3]")
    sets = {name: get(name, ints=True).reshape(-1) for name in ("landmarks", "contour_right", "contour_left",
                                                                  "skin_mask")}
    if "face_region" in t:
        sets["face_region"] = get("face_region", ints=True).reshape(-1)
    else:
        try:
            k = int(meta.get("narrow_face_vertices", ""))
        except ValueError:
            k = 0
        sets["face_region"] = torch.arange(k if 0 < k <= n else n)
    if int(triangles.max()) >= n:
        raise PeerError(f"{path}: triangles index past the {n} vertices")
    for name, s in sets.items():
        if s.numel() and int(s.max()) >= n:
            raise PeerError(f"{path}: {name} holds an index that is not a vertex (N = {n})")
    if sets["landmarks"].numel() != 68:
        raise PeerError(f"{path}: landmarks has {sets['landmarks'].numel()} entries, expected 68 (iBUG-68)")
    for name in ("contour_right", "contour_left"):
        if sets[name].numel() == 0:
            raise PeerError(f"{path}: {name} is empty: the sliding contour points need candidates")
    if sets["skin_mask"].numel() < 2:
        raise PeerError(f"{path}: skin_mask needs at least 2 vertices")
    if sets["face_region"].numel() == 0:
        raise PeerError(f"{path}: face_region is empty")
    return FaceModelData(mean_shape=mean_shape, shape_basis=shape_basis, shape_std=shape_std,
                         expr_basis=expr_basis, expr_std=expr_std, mean_albedo=mean_albedo,
                         albedo_basis=albedo_basis, albedo_std=albedo_std, triangles=triangles,
                         metadata=meta, **sets)


def model_for_config(cfg, model_path, config_path):
    """The face model a config names, truncated as configured ("demo" needs a file from
    `fml model demo -o M.safetensors`, since the demo model is generated by fml's code)."""
    path = model_path or cfg["model"]["path"]
    if path == "demo":
        raise PeerError(f"{config_path}: model.path is \"demo\"; write it with `fml model demo -o demo.safetensors` "
                        "and pass --model demo.safetensors")
    m = load_face_model(path)
    mc = cfg["model"]
    if mc["shape_modes"] is not None or mc["expr_modes"] is not None or mc["albedo_modes"] is not None:
        m.truncate(mc["shape_modes"], mc["expr_modes"], mc["albedo_modes"])
    return m


# ---------------------------------------------------------------------------------------------
# SH illumination (src/render/sh.rs)
# ---------------------------------------------------------------------------------------------

SH_C0, SH_C1, SH_C2, SH_C3, SH_C4 = 0.2820948, 0.4886025, 1.0925484, 0.31539157, 0.5462742


def sh_neutral(dtype=torch.float32, device="cpu"):
    """[27] coefficients with irradiance 1 everywhere (1/H0 on band 0 of each channel)."""
    g = torch.zeros(27, dtype=dtype, device=device)
    one = torch.tensor(1.0, dtype=dtype)
    g[0::9] = (one / torch.tensor(SH_C0, dtype=dtype)).to(device)
    return g


def sh_basis(n):
    """[B, N, 3] unit normals -> [B, N, 9] basis values."""
    x, y, z = n.unbind(-1)
    return torch.stack([torch.full_like(x, SH_C0), SH_C1 * y, SH_C1 * z, SH_C1 * x, SH_C2 * x * y,
                        SH_C2 * y * z, SH_C3 * (3.0 * z * z - 1.0), SH_C2 * x * z, SH_C4 * (x * x - y * y)], -1)


# ---------------------------------------------------------------------------------------------
# Image formation (src/render/camera.rs, layer.rs, reference.rs, ops/*.rs)
# ---------------------------------------------------------------------------------------------

NORMAL_EPS = 1e-20
PHOTO_EPS = 1e-12


def euler_to_matrix(angles):
    """[B, 3] (pitch, yaw, roll) -> [B, 3, 3], R = Rz(roll) Ry(yaw) Rx(pitch)."""
    p, y, r = angles.unbind(-1)
    sp, cp, sy, cy, sr, cr = p.sin(), p.cos(), y.sin(), y.cos(), r.sin(), r.cos()
    rows = [cr * cy, cr * sy * sp - sr * cp, cr * sy * cp + sr * sp,
            sr * cy, sr * sy * sp + cr * cp, sr * sy * cp - cr * sp,
            -sy, cy * sp, cy * cp]
    return torch.stack(rows, -1).reshape(-1, 3, 3)


def cross(a, b):
    """Cross product along the last dimension, [..., 3] x [..., 3] -> [..., 3]."""
    return torch.linalg.cross(a, b, dim=-1)


class Renderer:
    """The point-based image formation layer for one mesh topology and crop camera."""

    def __init__(self, model, focal, size, near, device, dtype=torch.float32):
        self.focal, self.width, self.height, self.near = float(focal), int(size), int(size), float(near)
        self.cx, self.cy = self.width * 0.5, self.height * 0.5
        tri = model.triangles.to(device)
        self.corners = [tri[:, 0].contiguous(), tri[:, 1].contiguous(), tri[:, 2].contiguous()]
        self.scatter = torch.cat(self.corners)  # [3F], corner-major
        n = model.num_vertices
        region = torch.zeros(n, dtype=dtype)
        region[model.face_region] = 1.0
        self.region = region.to(device).unsqueeze(0)  # [1, N]

    def to_camera(self, v, rotation, translation):
        """[B, N, 3], [B, 3], [B, 3] -> [B, N, 3] camera-space positions v R^T + t."""
        return torch.matmul(v, euler_to_matrix(rotation).transpose(1, 2)) + translation.unsqueeze(1)

    def normals(self, vc):
        """[B, N, 3] -> [B, N, 3] area-weighted unit vertex normals."""
        a, b, c = (vc.index_select(1, k) for k in self.corners)  # [B, F, 3] each
        fn = cross(b - a, c - a)
        acc = torch.zeros_like(vc).index_add_(1, self.scatter, torch.cat([fn, fn, fn], 1))  # [B, N, 3]
        return acc / (acc.square().sum(-1, keepdim=True) + NORMAL_EPS).sqrt()

    def shade(self, normals, reflectance, gamma):
        """[B, N, 3], [B, N, 3], [B, 27] (channel-major) -> [B, N, 3] = r * sum_b gamma_b H_b(n)."""
        g = gamma.reshape(-1, 3, 9).transpose(1, 2)  # [B, 9, 3]
        return reflectance * torch.bmm(sh_basis(normals), g)

    def project(self, points):
        """[B, K, 3] -> [B, K, 2] pixel positions; depth clamped at the near plane."""
        d = (-points[..., 2]).clamp_min(self.near)
        u = self.cx + self.focal * points[..., 0] / d
        v = self.cy - self.focal * points[..., 1] / d
        return torch.stack([u, v], -1)

    def sampleable(self, points):
        """[B, N, 3] -> [B, N] 0/1: in front of the near plane with the 2x2 footprint inside."""
        p = points.detach()
        uv = self.project(p)
        u, v = uv[..., 0], uv[..., 1]
        m = (-p[..., 2] > self.near) & (u >= 0.5) & (u <= self.width - 0.5) & (v >= 0.5) & (v <= self.height - 0.5)
        return m.to(p.dtype)

    def sample(self, points, image):
        """Bilinear samples of `image` [B, 3, H, W] at the projections of `points` [B, N, 3]
        -> [B, N, 3], zero where not sampleable. grid_sample with align_corners=False puts pixel
        centres at +0.5, the convention of docs/conventions.md."""
        uv = self.project(points)
        grid = torch.stack([uv[..., 0] * (2.0 / self.width) - 1.0, uv[..., 1] * (2.0 / self.height) - 1.0], -1)
        s = F.grid_sample(image.to(points.dtype), grid.unsqueeze(1), mode="bilinear", padding_mode="zeros",
                          align_corners=False)  # [B, 3, 1, N]
        return s.squeeze(2).transpose(1, 2) * self.sampleable(points).unsqueeze(-1)

    def sample_gather(self, points, image_hwc):
        """The literal mirror of reference::sample: `image_hwc` [B, H, W, 3], four gathers with
        the integer cell clamped to [0, size - 2] -> [B, N, 3]."""
        b, n, _ = points.shape
        w, h = self.width, self.height
        valid = self.sampleable(points)
        uv = self.project(points)
        xi, yi = uv[..., 0] - 0.5, uv[..., 1] - 0.5
        x0 = xi.detach().floor().clamp(0, w - 2)
        y0 = yi.detach().floor().clamp(0, h - 2)
        wx, wy = (xi - x0).unsqueeze(-1), (yi - y0).unsqueeze(-1)
        flat = image_hwc.to(points.dtype).reshape(b, h * w, 3)

        def texel(dx, dy):
            lin = ((y0 + dy) * w + (x0 + dx)).long().unsqueeze(-1).expand(b, n, 3)
            return flat.gather(1, lin)

        top = texel(0, 0) * (1 - wx) + texel(1, 0) * wx
        bottom = texel(0, 1) * (1 - wx) + texel(1, 1) * wx
        return (top * (1 - wy) + bottom * wy) * valid.unsqueeze(-1)

    def visibility(self, vc, normals):
        """[B, N, 3] x2 -> [B, N] 0/1 (facing x sampleable x face region), not differentiated."""
        v = vc.detach()
        facing = ((normals.detach() * -v).sum(-1) > 0).to(v.dtype)
        return facing * self.sampleable(v) * self.region.to(v.dtype)

    def render(self, vertices, reflectance, rotation, translation, gamma, image):
        """The layer of Sec. 5 for a batch; `image` is [B, 3, H, W] in [0, 1]."""
        vc = self.to_camera(vertices, rotation, translation)
        nrm = self.normals(vc)
        return {"camera_vertices": vc, "normals": nrm, "shaded": self.shade(nrm, reflectance, gamma),
                "sampled": self.sample(vc, image), "visible": self.visibility(vc, nrm)}

    @staticmethod
    def photometric(r):
        """Eq. 9 per image -> [B]: mean over visible vertices of |I(u_i) - c_i|_2 (0 if none)."""
        mask = r["visible"].detach()
        norm = ((r["sampled"] - r["shaded"]).square().sum(-1) + PHOTO_EPS).sqrt()
        return (norm * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


# ---------------------------------------------------------------------------------------------
# Encoder (src/encoder.rs), parameter split (network/params.rs), multi-level model
# (face_model/multilevel.rs) and the assembled network (network/mod.rs)
# ---------------------------------------------------------------------------------------------

class Encoder(nn.Module):
    """Modified AlexNet: [B, 3, S, S] in [0, 1] -> [B, num_outputs]."""

    def __init__(self, enc, num_outputs, seed):
        super().__init__()
        c_last, s_last = feature_size(enc)
        gen = torch.Generator().manual_seed((seed ^ 0xE4C0DE11) & 0x7FFFFFFFFFFFFFFF)
        self.convs = nn.ModuleList()
        self.pools = []
        in_c = 3
        for out, k, stride, pad, pool in enc["conv"]:
            conv = nn.Conv2d(in_c, out, k, stride=stride, padding=pad)
            self._he(conv, in_c * k * k, gen)
            self.convs.append(conv)
            self.pools.append(pool == 1)
            in_c = out
        self.fcs = nn.ModuleList()
        in_f = c_last * s_last * s_last
        for w in enc["fc"]:
            fc = nn.Linear(in_f, w)
            self._he(fc, in_f, gen)
            self.fcs.append(fc)
            in_f = w
        self.head = nn.Linear(in_f, num_outputs)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @staticmethod
    def _he(layer, fan_in, gen):
        with torch.no_grad():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
            layer.bias.zero_()

    def forward(self, images):
        x = images * 2.0 - 1.0
        for conv, pool in zip(self.convs, self.pools):
            x = F.relu(conv(x), inplace=True)
            if pool:
                x = F.max_pool2d(x, 3, 2)
        x = x.flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x), inplace=True)
        return self.head(x)


def default_translation(model, focal, size, fill):
    """Translation that centres the mean face's landmark box, `fill` of the crop wide."""
    lm = model.mean_shape[model.landmarks]  # [68, 3]
    lo, hi = lm.min(0).values, lm.max(0).values
    width = max(float(hi[0] - lo[0]), float(hi[1] - lo[1]), 1e-3)
    distance = focal * width / (fill * size)
    c = (lo + hi) * 0.5
    return [-float(c[0]), -float(c[1]), -distance - float(c[2])]


class ParamLayout:
    """Sizes, scales and offsets of the parameter vector x."""

    def __init__(self, model, cfg, correctives):
        self.shape = model.shape_std.shape[0]
        self.expr = model.expr_std.shape[0]
        self.albedo = model.albedo_std.shape[0]
        self.correctives = correctives
        self.scales = cfg["params"]
        cam = cfg["camera"]
        self.t0 = default_translation(model, cam["focal"], cfg["encoder"]["input_size"], cam["landmark_fill"])
        self._constants = {}

    def num_outputs(self):
        return self.shape + self.expr + self.albedo + 27 + 3 + 3 + 2 * self.correctives

    def constants(self, dtype, device):
        """Neutral SH [27], translation scales [3] and default translation [3] on `device`, made
        once: building them per call would copy from the host, which synchronises a CUDA stream."""
        key = (dtype, str(device))
        if key not in self._constants:
            self._constants[key] = (sh_neutral(dtype, device),
                                    torch.tensor(self.scales["translation"], dtype=dtype, device=device),
                                    torch.tensor(self.t0, dtype=dtype, device=device))
        return self._constants[key]

    def split(self, x):
        """[B, num_outputs] -> dict of named parameters (shapes beside each)."""
        sizes = [self.shape, self.expr, self.albedo, 27, 3, 3, self.correctives, self.correctives]
        zs, ze, za, g, rot, t, cg, cr = torch.split(x, sizes, dim=1)
        neutral, ts, t0 = self.constants(x.dtype, x.device)
        p = {"z_shape": zs, "z_expr": ze, "z_albedo": za,  # [B, K_s], [B, K_e], [B, K_r]
             "gamma": g * self.scales["light"] + neutral,  # [B, 27]
             "rotation": rot * self.scales["rotation"],  # [B, 3]
             "translation": t * ts + t0}  # [B, 3]
        if self.correctives > 0:
            p["corr_geometry"], p["corr_reflectance"] = cg, cr  # [B, C] each
        return p


class FaceNet(nn.Module):
    """Encoder + parameter split + multi-level face model (+ the renderer used by the losses)."""

    def __init__(self, model, cfg, correctives, device):
        super().__init__()
        n = model.num_vertices
        n3 = n * 3
        c = cfg["correctives"]["count"] if correctives else 0
        seed = cfg["train"]["seed"]
        self.num_vertices = n
        self.layout = ParamLayout(model, cfg, c)
        self.encoder = Encoder(cfg["encoder"], self.layout.num_outputs(), seed)
        if c > 0:
            # As network/mod.rs: the 2C corrective-coefficient outputs start N(0, head_std^2).
            with torch.no_grad():
                g = torch.Generator().manual_seed(seed)
                self.encoder.head.weight[-2 * c:] = torch.randn(2 * c, self.encoder.head.weight.shape[1], generator=g) * cfg["correctives"]["head_std"]

        def scaled(basis, std):  # [K, N, 3] * [K] -> [K, 3N]
            return (basis * std.reshape(-1, 1, 1)).reshape(std.shape[0], n3)

        self.register_buffer("mean_shape", model.mean_shape.reshape(1, n3).clone())
        self.register_buffer("shape_basis", scaled(model.shape_basis, model.shape_std))
        self.register_buffer("expr_basis", scaled(model.expr_basis, model.expr_std))
        self.register_buffer("mean_albedo", model.mean_albedo.reshape(1, n3).clone())
        self.register_buffer("albedo_basis", scaled(model.albedo_basis, model.albedo_std))
        if c > 0:
            gen = torch.Generator().manual_seed((seed ^ 0xC088EC71FE) & 0x7FFFFFFFFFFFFFFF)
            sg, sr = cfg["correctives"]["init_std"]
            self.corr_scale = tuple(cfg["correctives"]["scale"])
            self.corr_geometry = nn.Parameter(torch.randn(c, n3, generator=gen) * sg)  # [C, 3N]
            self.corr_reflectance = nn.Parameter(torch.randn(c, n3, generator=gen) * sr)  # [C, 3N]
        else:
            self.corr_geometry = self.corr_reflectance = None
        self.to(device)
        self.renderer = Renderer(model, cfg["camera"]["focal"], cfg["encoder"]["input_size"],
                                 cfg["camera"]["near"], device)

    def levels(self, p):
        """Both levels: base v^b, r^b [B, N, 3] and correctives F_g, F_r [B, N, 3] (or None)."""
        b, n = p["z_shape"].shape[0], self.num_vertices
        g = self.mean_shape.expand(b, -1)  # [B, 3N]
        if self.shape_basis.shape[0] > 0:
            g = g + p["z_shape"] @ self.shape_basis
        if self.expr_basis.shape[0] > 0:
            g = g + p["z_expr"] @ self.expr_basis
        r = self.mean_albedo.expand(b, -1)
        if self.albedo_basis.shape[0] > 0:
            r = r + p["z_albedo"] @ self.albedo_basis
        lv = {"base_geometry": g.reshape(b, n, 3), "base_reflectance": r.reshape(b, n, 3),
              "geometry_offset": None, "reflectance_offset": None}
        if self.corr_geometry is not None:
            # multilevel.rs: F = scale * delta Theta (a reparametrisation of the stored bases).
            sg, sr = self.corr_scale
            lv["geometry_offset"] = (sg * (p["corr_geometry"] @ self.corr_geometry)).reshape(b, n, 3)
            lv["reflectance_offset"] = (sr * (p["corr_reflectance"] @ self.corr_reflectance)).reshape(b, n, 3)
        return lv

    def forward(self, images):
        """[B, 3, S, S] in [0, 1] -> (raw x [B, P], params, levels)."""
        x = self.encoder(images)
        p = self.layout.split(x)
        return x, p, self.levels(p)


# ---------------------------------------------------------------------------------------------
# Losses (src/loss/mod.rs, sparse.rs, regularizers.rs)
# ---------------------------------------------------------------------------------------------

def one_ring_edges(triangles, n):
    """Directed 1-ring edges (i, j), sorted by i then j, de-duplicated, with 1 / |N_i| -> (src, dst, w)."""
    t = triangles
    a = torch.cat([t[:, 0], t[:, 1], t[:, 2]])
    b = torch.cat([t[:, 1], t[:, 2], t[:, 0]])
    src, dst = torch.cat([a, b]), torch.cat([b, a])
    keep = src != dst
    key = torch.unique(src[keep] * n + dst[keep])  # sorted
    src, dst = key // n, key % n
    deg = torch.bincount(src, minlength=n).to(torch.float32)
    return src, dst, 1.0 / deg[src]


def skin_pairs(skin, partners, seed):
    """`partners` random skin partners for every skin vertex (a vertex never pairs with itself)."""
    m = skin.numel()
    gen = torch.Generator().manual_seed((seed ^ 0x5C14A1B) & 0x7FFFFFFFFFFFFFFF)
    pick = torch.randint(0, m, (m, partners), generator=gen)
    own = torch.arange(m).unsqueeze(1).expand(m, partners)
    pick = torch.where(pick == own, (own + 1) % m, pick)
    return skin.unsqueeze(1).expand(m, partners).reshape(-1), skin[pick].reshape(-1)


class Objective:
    """The loss of Sec. 6 for one face model and network."""

    def __init__(self, model, net, cfg, device):
        self.w = cfg["loss"]
        dev = device
        self.fixed = model.landmarks.to(dev)
        self.cand_right = model.contour_right.to(dev)
        self.cand_left = model.contour_left.to(dev)
        src, dst, inv = one_ring_edges(model.triangles, model.num_vertices)
        self.src, self.dst, self.inv_degree = src.to(dev), dst.to(dev), inv.to(dev)
        a, b = skin_pairs(model.skin_mask, self.w["glo_partners"], cfg["train"]["seed"])
        self.pair_a, self.pair_b, self.mask_size = a.to(dev), b.to(dev), model.skin_mask.numel()
        self.n = model.num_vertices

    def _pick(self, cam, targets, start, count, cand, r):
        """Sliding points start..start+count: candidate closest to each detection's camera ray."""
        t = targets[:, start:start + count]  # [B, m, 2]
        dx = (t[..., 0] - r.cx) / r.focal
        dy = -(t[..., 1] - r.cy) / r.focal
        d = torch.stack([dx, dy, -torch.ones_like(dx)], -1)
        d = d / d.square().sum(-1, keepdim=True).sqrt()  # [B, m, 3]
        p = cam.detach().index_select(1, cand)  # [B, K, 3]
        along = torch.bmm(p, d.transpose(1, 2))  # [B, K, m]
        dist = p.square().sum(-1, keepdim=True) - along.square()
        return cand[dist.argmin(1)]  # [B, m]

    def landmark_indices(self, cam, targets, r):
        """[B, N, 3], [B, 68, 2] -> [B, 68] vertex of every landmark (sliding contour re-picked)."""
        b = cam.shape[0]
        fixed = self.fixed.unsqueeze(0).expand(b, 68)
        right = self._pick(cam, targets, 0, 8, self.cand_right, r)
        left = self._pick(cam, targets, 9, 8, self.cand_left, r)
        return torch.cat([right, fixed[:, 8:9], left, fixed[:, 17:]], 1)

    def sparse(self, cam, targets, confidence, r):
        """E_sparse per image and the mean landmark distance in pixels, each [B]."""
        idx = self.landmark_indices(cam, targets, r)
        uv = r.project(cam.gather(1, idx.unsqueeze(-1).expand(-1, -1, 3)))  # [B, 68, 2]
        d2 = (uv - targets).square().sum(-1)  # [B, 68]
        present = (confidence > 0).to(d2.dtype)
        count = present.sum(-1).clamp_min(1.0)
        return (d2 * confidence).sum(-1) / count, (d2.detach().sqrt() * present).sum(-1) / count

    def diff(self, x):
        """[B, N, 3] -> [B, E, 3] per-edge x_i - x_j."""
        return x.index_select(1, self.src) - x.index_select(1, self.dst)

    def compute(self, net, p, lv, images, landmarks, confidence):
        """Every term (batch means) and the weighted total; `images` [B, 3, S, S]."""
        w = self.w
        r = net.renderer

        def render(v, refl):
            return r.render(v, refl, p["rotation"], p["translation"], p["gamma"], images)

        base = render(lv["base_geometry"], lv["base_reflectance"])
        terms = []
        sparse, px = self.sparse(base["camera_vertices"], landmarks, confidence, r)
        terms.append(("sparse", sparse.mean(), w["sparse"]))
        terms.append(("photo_base", r.photometric(base).mean(), w["photo"]))
        sq = lambda z: z.square().sum(1)  # noqa: E731  [B, K] -> [B]
        terms.append(("std_geometry", (sq(p["z_shape"]) + sq(p["z_expr"])).mean(), w["std_geometry"]))
        terms.append(("std_albedo", sq(p["z_albedo"]).mean(), w["std_albedo"]))
        if lv["geometry_offset"] is not None:
            goff = lv["geometry_offset"]
            geometry = lv["base_geometry"] + goff
            refl = lv["base_reflectance"] + lv["reflectance_offset"]
            f = render(geometry, refl)
            terms.append(("photo_final", r.photometric(f).mean(), w["photo"]))
            smo = (self.diff(goff).square().sum(-1) * self.inv_degree).sum(1) / self.n
            terms.append(("smo", smo.mean(), w["smo"]))
            terms.append(("sta", (goff.square().sum(-1).sum(1) / goff.shape[1]).mean(), w["sta"]))
            s = f["sampled"].detach()
            chroma = s / (s.sum(-1, keepdim=True) + 1e-6)
            dist = (self.diff(chroma).square().sum(-1) + 1e-12).sqrt()  # [B, E]
            vis = f["visible"].detach()
            both = vis.index_select(1, self.src) * vis.index_select(1, self.dst)
            weights = torch.exp(-w["ref_beta"] * dist) * both
            np_ = (self.diff(refl).square().sum(-1) + 1e-8).pow(w["ref_p"] / 2.0)
            terms.append(("ref", ((np_ * weights).sum(1) / self.n).mean(), w["ref_sparsity"]))
            d = refl.index_select(1, self.pair_a) - refl.index_select(1, self.pair_b)
            terms.append(("glo", (d.square().sum(-1).sum(1) / max(self.mask_size, 1)).mean(), w["glo"]))
        total = None
        for _, t, wt in terms:
            if wt != 0.0:
                total = t * wt if total is None else total + t * wt
        if total is None:
            raise PeerError("every loss weight is zero")
        return total, {name: t for name, t, _ in terms}, px.mean()


# ---------------------------------------------------------------------------------------------
# Training step, data and benchmarks
# ---------------------------------------------------------------------------------------------

def make_optimizer(net, cfg):
    """torch.optim.Adadelta with the three learning-rate groups of trainer.rs."""
    o = cfg["optim"]
    groups = [{"params": list(net.encoder.parameters()), "lr": o["lr_encoder"]}]
    if net.corr_geometry is not None:
        groups.append({"params": [net.corr_geometry], "lr": o["lr_geometry"]})
        groups.append({"params": [net.corr_reflectance], "lr": o["lr_reflectance"]})
    return torch.optim.Adadelta(groups, rho=o["rho"], eps=o["eps"])


def synthetic_pool(count, size, seed):
    """Crops like data::dataset::write_synthetic (colour ramps, an ellipse of 68 landmarks drawn
    as white pixels, confidence 1): u8 images [P, S, S, 3], landmarks [P, 68, 2], conf [P, 68]."""
    gen = torch.Generator().manual_seed(seed)
    s = float(size)
    base = torch.rand(count, 3, generator=gen) * 160.0 + 40.0  # r0, g0, b0 in [40, 200)
    fy, fx = torch.meshgrid(torch.arange(size) / s, torch.arange(size) / s, indexing="ij")
    ramp = torch.stack([50.0 * fx, 50.0 * fy, 25.0 * (fx + fy)], -1)  # [S, S, 3]
    img = (base.reshape(count, 1, 1, 3) + ramp).to(torch.uint8)
    i = torch.arange(68, dtype=torch.float32)
    a = i / 68.0 * (2.0 * math.pi)
    rad = 0.3 * s * (0.6 + 0.4 * ((torch.arange(68) % 5).float() / 4.0))
    jitter = torch.rand(count, 68, generator=gen) * 2.0 - 1.0
    lx = 0.5 * s + rad * torch.cos(a) + jitter
    ly = (0.5 * s + rad * torch.sin(a)).expand(count, 68)
    lm = torch.stack([lx, ly], -1)
    px, py = lx.long(), ly.long()
    inside = (px >= 0) & (px < size) & (py >= 0) & (py < size)
    for k in range(count):
        sel = inside[k]
        img[k, py[k][sel], px[k][sel]] = 255
    return img, lm, torch.ones(count, 68)


def read_fmlds(path, split="train"):
    """Records of one split of a packed dataset (src/data/dataset.rs, version 1): u8 crops
    [P, S, S, 3], landmarks [P, 68, 2], confidences [P, 68]."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PeerError(f"{path}: {e.strerror}")
    if len(data) < 24 or data[:8] != b"FMLDSv1\n" or data[-8:] != b"FMLDSEND":
        raise PeerError(f"{path}: not a complete fml dataset (.fmlds v1): magic bytes missing")
    (jlen,) = struct.unpack("<Q", data[-16:-8])
    try:
        head = json.loads(data[len(data) - 16 - jlen:len(data) - 16].decode("utf-8"))
        size, count, rb = int(head["size"]), int(head["count"]), int(head["record_bytes"])
        splits = [r["split"] for r in head["records"]]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise PeerError(f"{path}: bad dataset index: {e}")
    if rb != size * size * 3 + 68 * 3 * 4 + 8 or 8 + count * rb + jlen + 16 != len(data) or len(splits) != count:
        raise PeerError(f"{path}: record size, count and file size do not agree")
    keep = [i for i, sp in enumerate(splits) if split is None or sp == split]
    if not keep:
        raise PeerError(f"{path}: no {split} records")
    img = torch.empty(len(keep), size, size, 3, dtype=torch.uint8)
    lm = torch.empty(len(keep), 68, 2)
    conf = torch.empty(len(keep), 68)
    for k, i in enumerate(keep):
        o = 8 + i * rb
        img[k] = torch.frombuffer(bytearray(data[o:o + size * size * 3]), dtype=torch.uint8).reshape(size, size, 3)
        o += size * size * 3
        f = torch.frombuffer(bytearray(data[o:o + 68 * 3 * 4]), dtype=torch.float32)
        lm[k], conf[k] = f[:136].reshape(68, 2), f[136:]
    return img, lm, conf


def load_checkpoint(net, path):
    """Encoder weights (and corrective bases when both sides have them) from an fml checkpoint
    (`encoder.conv1.weight`, ..., `correctives.geometry`). A pretraining head gets new rows for
    the corrective coefficients (small random weights), as trainer.rs's grow_head does."""
    t, meta = read_safetensors(path)
    if "fml_checkpoint" not in meta:
        raise PeerError(f"{path}: no fml_checkpoint metadata: not an fml checkpoint")
    enc = net.encoder
    names = {f"encoder.conv{i + 1}.{w}": getattr(c, w) for i, c in enumerate(enc.convs) for w in ("weight", "bias")}
    names.update({f"encoder.fc{i + 1}.{w}": getattr(c, w) for i, c in enumerate(enc.fcs) for w in ("weight", "bias")})
    names.update({"encoder.head.weight": enc.head.weight, "encoder.head.bias": enc.head.bias})
    if net.corr_geometry is not None and "correctives.geometry" in t:
        names.update({"correctives.geometry": net.corr_geometry, "correctives.reflectance": net.corr_reflectance})
    with torch.no_grad():
        for name, param in names.items():
            if name not in t:
                raise PeerError(f"{path}: missing tensor {name!r}")
            src = t[name].to(torch.float32)
            if name.startswith("encoder.head") and src.shape[0] < param.shape[0] and src.shape[1:] == param.shape[1:]:
                # trainer.rs grow_head: the new corrective rows keep this net's random init.
                src = torch.cat([src, param.detach().cpu()[src.shape[0]:].to(src.dtype)])
            if tuple(src.shape) != tuple(param.shape):
                raise PeerError(f"{path}: {name} has shape {list(src.shape)}, this config needs {list(param.shape)}")
            param.copy_(src.to(param.device))


def configure_torch(args):
    """Precision and cuDNN settings: full f32 unless --tf32 (fml's default is f32 too)."""
    prec = "tf32" if args.tf32 else "ieee"
    done = False
    try:  # the fp32_precision API of torch >= 2.9 (mixing it with allow_tf32 is refused)
        torch.backends.fp32_precision = prec
        torch.backends.cuda.matmul.fp32_precision = prec
        torch.backends.cudnn.fp32_precision = prec
        torch.backends.cudnn.conv.fp32_precision = prec
        torch.backends.cudnn.rnn.fp32_precision = prec
        done = True
    except (AttributeError, RuntimeError):
        pass
    if not done:
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}: f32 matmul/conv precision {prec}, cuDNN autotuning "
          f"{'off' if args.no_cudnn_benchmark else 'on'}, {torch.get_num_threads()} CPU threads", file=sys.stderr)
    # Fixed shapes: let cuDNN pick its fastest algorithms, as any tuned eager PyTorch job does.
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PeerError("device cuda: this PyTorch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise PeerError(f"unknown device {name!r} (cpu, cuda or auto)")
    return torch.device(name)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom(e):
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(e, oom)) or "out of memory" in str(e).lower()


def write_json(path, obj):
    """Atomic write: a temporary file in the same folder, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".peer-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as e:
        raise PeerError(f"{path}: {e.strerror}")


def setup(args, correctives):
    configure_torch(args)
    torch.manual_seed(0)
    cfg = load_config(args.config)
    device = pick_device(args.device)
    model = model_for_config(cfg, args.model, args.config)
    net = FaceNet(model, cfg, correctives, device)
    if getattr(args, "checkpoint", None):
        ck = args.checkpoint
        load_checkpoint(net, os.path.join(ck, "checkpoint.safetensors") if os.path.isdir(ck) else ck)
    return cfg, device, model, net


def bench_infer(args):
    """Latency at batch 1 (median of single synchronised runs) and throughput over batch sizes."""
    cfg_probe = load_config(args.config)
    corr = {"on": True, "off": False, "config": cfg_probe["train"]["correctives"]}[args.correctives]
    cfg, device, _, net = setup(args, corr)
    net.eval()
    s = cfg["encoder"]["input_size"]
    fn = net
    if args.compile:
        fn = torch.compile(net)
    gen = torch.Generator().manual_seed(1)
    try:
        batches = [int(b) for b in args.batches.split(",")] if args.batches else (
            [1, 8, 32, 128, 256, 512, 1024, 2048, 4096] if device.type == "cuda" else [1, 8, 32])
    except ValueError:
        raise PeerError(f"--batches {args.batches!r}: expected comma-separated integers")
    if not batches or min(batches) <= 0:
        raise PeerError("--batches must list positive batch sizes")

    def runner(b):
        host = torch.rand(b, 3, s, s, generator=gen)
        if args.transfer:
            def once():
                x, _, _ = fn(host.to(device, non_blocking=False))
                return x.cpu()
        else:
            dev_in = host.to(device)

            def once():
                return fn(dev_in)[0]
        return once

    per_batch, latency_ms = [], None
    with torch.inference_mode():
        for b in batches:
            try:
                once = runner(b)
                for _ in range(args.warmup):
                    once()
                sync(device)
                if b == 1:
                    times = []
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        once()
                        sync(device)
                        times.append(time.perf_counter() - t0)
                    latency_ms = statistics.median(times) * 1e3
                # Throughput: back-to-back batches, synchronised once, at least min_time seconds.
                iters, t0 = 0, time.perf_counter()
                while True:
                    once()
                    iters += 1
                    if iters % 4 == 0 or iters >= args.repeats:
                        sync(device)
                        el = time.perf_counter() - t0
                        if el >= args.min_time or iters >= 100_000:
                            break
                sync(device)
                el = time.perf_counter() - t0
            except RuntimeError as e:
                if not is_oom(e):
                    raise
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                print(f"batch {b}: out of memory, stopping the sweep", file=sys.stderr)
                break
            ms = el / iters * 1e3
            per_batch.append({"batch": b, "ms_per_batch": ms, "img_s": b * iters / el})
            print(f"infer batch {b}: {ms:.3f} ms/batch, {b * iters / el:.1f} img/s", file=sys.stderr)
            if ms / 1e3 > args.max_batch_seconds:
                break
    if latency_ms is None:
        raise PeerError("the batch sizes must include 1 (latency is measured at batch 1)")
    best = max(per_batch, key=lambda r: r["img_s"])
    out = {"device": device.type, "config": args.config, "input_size": s, "latency_ms_b1": latency_ms,
           "hz_b1": 1e3 / latency_ms, "best_batch": best["batch"], "throughput_img_s": best["img_s"],
           "per_batch": per_batch}
    print(json.dumps({k: v for k, v in out.items() if k != "per_batch"}))
    if args.json:
        write_json(args.json, out)


def bench_train(args):
    """Images/s of full training steps (forward, losses, backward, AdaDelta) after warm-up."""
    finetune = args.stage == "finetune"
    cfg, device, model, net = setup(args, finetune)
    net.train()
    batch = args.batch or cfg["train"]["batch"]
    s = cfg["encoder"]["input_size"]
    objective = Objective(model, net, cfg, device)
    opt = make_optimizer(net, cfg)
    if args.dataset:
        img_u8, lms, conf = read_fmlds(args.dataset)
        if img_u8.shape[1] != s:
            raise PeerError(f"{args.dataset} holds {img_u8.shape[1]}x{img_u8.shape[1]} crops but "
                            f"encoder.input_size is {s}")
        pool = img_u8.shape[0]
    else:
        pool = batch + 3  # consecutive batches overlap differently each step
        img_u8, lms, conf = synthetic_pool(pool, s, cfg["train"]["seed"])
    if args.data_on_device:
        img_u8 = img_u8.to(device)
    lms, conf = lms.to(device), conf.to(device)

    def step_fn(images, lm, cf):
        x, p, lv = net(images)
        total, _, _ = objective.compute(net, p, lv, images, lm, cf)
        return total

    loss_fn = torch.compile(step_fn) if args.compile else step_fn

    host_idx = torch.arange(batch)
    dev_idx = torch.arange(batch, device=device)

    def step(k):
        # The loader's work: gather the batch's u8 HWC crops, upload them (fml's loader uploads
        # too), convert to f32 NCHW in [0, 1] on the device.
        idx = dev_idx if args.data_on_device else host_idx
        images = img_u8[(idx + k * batch) % pool].to(device, non_blocking=True)
        images = images.permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        di = (dev_idx + k * batch) % pool
        opt.zero_grad(set_to_none=True)
        total = loss_fn(images, lms[di], conf[di])
        total.backward()
        opt.step()
        v = total.item()  # fml's trainer reads its loss terms every step
        if not math.isfinite(v):
            raise PeerError(f"step {k + 1}: the loss is {v}")
        return v

    for k in range(args.warmup):
        step(k)
    sync(device)
    t0 = time.perf_counter()
    for k in range(args.steps):
        last = step(args.warmup + k)
    sync(device)
    el = time.perf_counter() - t0
    out = {"device": device.type, "config": args.config, "stage": args.stage, "batch": batch,
           "steps": args.steps, "images_per_s": batch * args.steps / el, "ms_per_step": el / args.steps * 1e3}
    print(json.dumps(out))
    print(f"last loss {last:.5f}", file=sys.stderr)
    if args.json:
        write_json(args.json, out)


# ---------------------------------------------------------------------------------------------
# selfcheck
# ---------------------------------------------------------------------------------------------

def grid_model(k=12, size=100.0, modes=(3, 2, 2), seed=0, dtype=torch.float32):
    """A small procedural face-like model: a `k` x `k` spherical-cap grid (mm) facing +z, random
    bases, 68 landmarks spread over the grid, contour candidates on the left/right columns."""
    gen = torch.Generator().manual_seed(seed)
    lin = torch.linspace(-0.5, 0.5, k) * size
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    zz = -(xx.square() + yy.square()) / (2.0 * size) + 4.0 * torch.sin(xx / size * 5.0) * torch.cos(yy / size * 4.0)
    mean = torch.stack([xx, yy, zz], -1).reshape(-1, 3).to(dtype)
    n = k * k
    tris = []
    for j in range(k - 1):
        for i in range(k - 1):
            a = j * k + i
            tris += [[a, a + 1, a + k + 1], [a, a + k + 1, a + k]]
    ks, ke, kr = modes

    def basis(m, scale):
        return (torch.randn(m, n, 3, generator=gen) * scale).to(dtype), (torch.rand(m, generator=gen) + 0.5).to(dtype)

    sb, ss = basis(ks, 1.0)
    eb, es = basis(ke, 1.0)
    ab, as_ = basis(kr, 0.02)
    inner = [j * k + i for j in range(2, k - 2) for i in range(2, k - 2)]
    landmarks = torch.tensor([inner[(7 * t) % len(inner)] for t in range(68)])
    return FaceModelData(mean_shape=mean, shape_basis=sb, shape_std=ss, expr_basis=eb, expr_std=es,
                         mean_albedo=(torch.rand(n, 3, generator=gen) * 0.5 + 0.3).to(dtype), albedo_basis=ab,
                         albedo_std=as_, triangles=torch.tensor(tris), landmarks=landmarks,
                         contour_right=torch.tensor([j * k for j in range(k)]),
                         contour_left=torch.tensor([j * k + k - 1 for j in range(k)]),
                         skin_mask=torch.tensor(inner), face_region=torch.arange(n), metadata={})


def tiny_config():
    cfg = {k: dict(v) for k, v in DEFAULTS.items()}
    cfg["encoder"] = {"input_size": 32, "conv": [[4, 5, 2, 2, 1], [8, 3, 1, 1, 0], [8, 3, 1, 1, 0], [8, 3, 1, 1, 0],
                                                 [8, 3, 1, 1, 1]], "fc": [16, 16]}
    cfg["camera"] = {"focal": 133.0, "near": 10.0, "landmark_fill": 1.0 / 1.3}
    cfg["correctives"] = {"count": 4, "init_std": [1e-3, 1e-4]}
    validate_config(cfg)
    return cfg


class Check:
    def __init__(self):
        self.failed = 0

    def __call__(self, ok, what):
        print(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            self.failed += 1


def selfcheck(args):
    # Tiny tensors: one thread is fastest and avoids OpenMP spin-waiting on a shared machine.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    check = Check()
    dd = torch.float64

    # 1. Renderer gradients in float64 against finite differences.
    m = grid_model(k=5, size=60.0, dtype=dd)
    r = Renderer(m, focal=120.0, size=24, near=1.0, device="cpu", dtype=dd)
    gen = torch.Generator().manual_seed(3)
    b = 2
    verts = (m.mean_shape.unsqueeze(0).repeat(b, 1, 1) + torch.randn(b, m.num_vertices, 3, generator=gen,
                                                                      dtype=dd) * 0.3).requires_grad_()
    refl = (torch.rand(b, m.num_vertices, 3, generator=gen, dtype=dd) * 0.6 + 0.2).requires_grad_()
    rot = (torch.randn(b, 3, generator=gen, dtype=dd) * 0.1).requires_grad_()
    trans = torch.tensor([[1.0, -2.0, -400.0], [-3.0, 1.5, -380.0]], dtype=dd).requires_grad_()
    gamma = (sh_neutral(dd).repeat(b, 1) + torch.randn(b, 27, generator=gen, dtype=dd) * 0.1).requires_grad_()
    yy, xx = torch.meshgrid(torch.arange(24, dtype=dd), torch.arange(24, dtype=dd), indexing="ij")
    image = torch.stack([0.5 + 0.3 * torch.sin(xx / 3.0), 0.4 + 0.3 * torch.cos(yy / 4.0),
                         0.5 + 0.2 * torch.sin((xx + yy) / 5.0)], 0).unsqueeze(0).repeat(b, 1, 1, 1)
    image_hwc = image.permute(0, 2, 3, 1).contiguous()
    vc0 = r.to_camera(verts, rot, trans).detach()
    uv0 = r.project(vc0) - 0.5
    frac = uv0 - uv0.floor()
    check(bool((r.sampleable(vc0) > 0).all()), "gradcheck scene: every vertex is sampleable")
    check(float(torch.minimum(frac, 1 - frac).min()) > 1e-4, "gradcheck scene: no vertex on a pixel-cell edge")

    def photo(v, rf, ro, t, g):
        out = r.render(v, rf, ro, t, g, image)
        return torch.cat([Renderer.photometric(out), out["shaded"].reshape(-1), out["sampled"].reshape(-1)])

    check(torch.autograd.gradcheck(photo, (verts, refl, rot, trans, gamma), eps=1e-6, atol=1e-5, rtol=1e-4),
          "float64 gradcheck: render + photometric (vertices, reflectance, rotation, translation, SH)")
    check(torch.autograd.gradcheck(lambda v: r.sample_gather(v, image_hwc), (vc0.clone().requires_grad_(),),
                                   eps=1e-6, atol=1e-5), "float64 gradcheck: gather-based bilinear sampling")
    vc = vc0.clone().requires_grad_()
    sa, sb = r.sample(vc, image), r.sample_gather(vc, image_hwc)
    ga = torch.autograd.grad(sa.sum(), vc)[0]
    gb = torch.autograd.grad(sb.sum(), vc)[0]
    check(float((sa - sb).abs().max().detach()) < 1e-12 and float((ga - gb).abs().max()) < 1e-9,
          "grid_sample == gather-based sampling (values and gradients)")
    # The sampler reads pixel centres at +0.5: a vertex projecting onto pixel (3, 5)'s centre
    # returns that pixel's colour.
    pt = torch.tensor([[[(3.5 - r.cx) / r.focal * 100.0, -(5.5 - r.cy) / r.focal * 100.0, -100.0]]], dtype=dd)
    got = r.sample(pt, image[:1])[0, 0]
    check(float((got - image[0, :, 5, 3]).abs().max()) < 1e-12, "bilinear sample at a pixel centre = that pixel")
    # Facing: the grid faces +z, so at identity pose all normals face the camera; rotated by pi
    # about y they all face away.
    nrm = r.normals(vc0)
    check(bool((nrm[..., 2] > 0).all()) and float((nrm.norm(dim=-1) - 1).abs().max()) < 1e-12,
          "normals are unit and point out of the grid toward the camera")
    back = r.to_camera(m.mean_shape.unsqueeze(0), torch.tensor([[0.0, math.pi, 0.0]], dtype=dd),
                       torch.tensor([[0.0, 0.0, -400.0]], dtype=dd))
    check(float(r.visibility(back, r.normals(back)).sum()) == 0.0, "back-facing vertices are invisible")
    # Neutral light returns the reflectance.
    c = r.shade(nrm, refl.detach(), sh_neutral(dd).repeat(b, 1))
    check(float((c - refl.detach()).abs().max()) < 1e-6, "neutral SH light: shaded colour = reflectance")
    # Euler convention: positive yaw turns +z toward +x.
    rm = euler_to_matrix(torch.tensor([[0.0, 0.3, 0.0]], dtype=dd))[0]
    check(abs(float(rm[0, 2]) - math.sin(0.3)) < 1e-12 and float((rm @ rm.T - torch.eye(3, dtype=dd)).abs().max())
          < 1e-12, "R = Rz Ry Rx: orthonormal, yaw turns +z toward +x")

    # 2. A zero head gives the mean face, frontal, at the default translation, in neutral light.
    cfg = tiny_config()
    models = [("procedural grid model", grid_model(k=12))]
    if args.model:
        models.append((args.model, load_face_model(args.model)))
    for name, fm in models:
        cfg["encoder"]["input_size"] = 32
        net = FaceNet(fm, cfg, True, torch.device("cpu"))
        x, p, lv = net(torch.rand(2, 3, 32, 32))
        check(float(x.abs().max()) == 0.0, f"{name}: zero head -> zero output")
        check(float((lv["base_geometry"] - fm.mean_shape).abs().max()) == 0.0
              and float(lv["geometry_offset"].abs().max()) == 0.0, f"{name}: zero head -> mean face, no correction")
        check(float((lv["base_reflectance"] - fm.mean_albedo).abs().max()) == 0.0, f"{name}: mean reflectance")
        check(float(p["rotation"].abs().max()) == 0.0 and float((p["gamma"] - sh_neutral()).abs().max()) == 0.0,
              f"{name}: frontal pose and neutral light")
        t0 = torch.tensor(net.layout.t0)
        check(float((p["translation"] - t0).abs().max()) == 0.0 and net.layout.t0[2] < 0,
              f"{name}: default translation {[round(v, 2) for v in net.layout.t0]} (in front of the camera)")
        cam = net.renderer.to_camera(lv["base_geometry"], p["rotation"], p["translation"])
        lm = net.renderer.project(cam[:, fm.landmarks])[0]  # [68, 2]
        lo, hi = lm.min(0).values, lm.max(0).values
        centre = (lo + hi) / 2
        extent = float((hi - lo).max())
        check(float((centre - 16.0).abs().max()) < 1.5 and abs(extent / 32.0 - 1 / 1.3) < 0.1,
              f"{name}: landmarks centred in the crop ({centre.tolist()}), covering {extent / 32:.3f} "
              f"of it (landmark_fill {1 / 1.3:.3f})")

    # 3. Sizes: AlexNet geometry and parameter count, the layout's 257 + 2C.
    check(feature_size(DEFAULTS["encoder"]) == (256, 6), "default encoder: 240 px -> 256 x 6 x 6 features")
    enc = Encoder(DEFAULTS["encoder"], 257, 1)
    expect = (96 * 3 * 121 + 96) + (256 * 96 * 25 + 256) + (384 * 256 * 9 + 384) + (384 * 384 * 9 + 384) + \
        (256 * 384 * 9 + 256) + (4096 * 9216 + 4096) + (4096 * 4096 + 4096) + (257 * 4096 + 257)
    check(sum(q.numel() for q in enc.parameters()) == expect, f"AlexNet encoder has {expect} parameters")
    del enc
    fm = grid_model(k=12, modes=(80, 64, 80))
    lay = ParamLayout(fm, cfg, 500)
    check(lay.num_outputs() == 257 + 1000, "parameter vector: 80 + 64 + 80 + 27 + 3 + 3 + 2C")
    ok = True
    try:
        feature_size({"input_size": 16, "conv": DEFAULTS["encoder"]["conv"], "fc": [1]})
        ok = False
    except PeerError:
        pass
    check(ok, "a 16 px input is refused by the AlexNet geometry")

    # 4. AdaDelta: torch's update is Caffe's (the first step by hand, as adadelta.rs's test).
    xv = torch.tensor([3.0, -2.0], dtype=dd, requires_grad=True)
    opt = torch.optim.Adadelta([xv], lr=1.0, rho=0.9, eps=1e-6)
    xv.square().sum().backward()
    opt.step()
    exp = [x0 - 1e-3 / math.sqrt(0.1 * (2 * x0) ** 2 + 1e-6) * 2 * x0 for x0 in (3.0, -2.0)]
    check(max(abs(float(a) - e) for a, e in zip(xv, exp)) < 1e-12, "torch Adadelta step = Caffe/fml AdaDelta step")

    # 5. Sliding contour: the candidate on the detection's ray is picked.
    m12 = grid_model(k=12)
    net = FaceNet(m12, cfg, False, torch.device("cpu"))
    obj = Objective(m12, net, cfg, torch.device("cpu"))
    _, p, lv = net(torch.rand(1, 3, 32, 32))
    cam = net.renderer.to_camera(lv["base_geometry"], p["rotation"], p["translation"])
    targets = net.renderer.project(cam[:, m12.landmarks]).detach().clone()
    want = m12.contour_right[5]
    targets[0, 2] = net.renderer.project(cam[:, want:want + 1])[0, 0]
    idx = obj.landmark_indices(cam, targets, net.renderer)
    check(int(idx[0, 2]) == int(want) and int(idx[0, 30]) == int(m12.landmarks[30]),
          "sliding landmark re-picks the contour candidate on its ray; fixed points keep their vertex")

    # 6. One training step per stage: finite terms, every group receives gradients, loss moves.
    for stage in ("pretrain", "finetune"):
        net = FaceNet(m12, cfg, stage == "finetune", torch.device("cpu"))
        obj = Objective(m12, net, cfg, torch.device("cpu"))
        opt = make_optimizer(net, cfg)
        img, lms, conf = synthetic_pool(4, 32, 1)
        images = img.permute(0, 3, 1, 2).float() / 255.0
        losses = []
        for _ in range(3):
            opt.zero_grad()
            x, p, lv = net(images)
            total, terms, px = obj.compute(net, p, lv, images, lms, conf)
            total.backward()
            losses.append(float(total))
            grads_ok = net.encoder.head.weight.grad is not None and float(net.encoder.head.weight.grad.abs().sum()) > 0
            if stage == "finetune":
                grads_ok = grads_ok and net.corr_geometry.grad is not None and net.corr_reflectance.grad is not None
            opt.step()
        want_terms = {"sparse", "photo_base", "std_geometry", "std_albedo"}
        if stage == "finetune":
            want_terms |= {"photo_final", "smo", "sta", "ref", "glo"}
        check(set(terms) == want_terms and all(math.isfinite(float(v)) for v in terms.values()),
              f"{stage}: terms {sorted(terms)} are finite")
        check(grads_ok and losses[-1] != losses[0], f"{stage}: gradients reach every group; loss {losses[0]:.4f} -> "
              f"{losses[-1]:.4f}")

    # 7. Bad input is reported, not raised as a traceback.
    with tempfile.TemporaryDirectory() as d:
        bad = os.path.join(d, "bad.toml")
        with open(bad, "w") as f:
            f.write("[train]\nbatchsize = 3\n")
        try:
            load_config(bad)
            msg = ""
        except PeerError as e:
            msg = str(e)
        check("bad.toml" in msg and "batchsize" in msg, f"unknown config key named with its file: {msg!r}")
        junk = os.path.join(d, "m.safetensors")
        with open(junk, "wb") as f:
            f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{}              ")
        try:
            load_face_model(junk)
            msg = ""
        except PeerError as e:
            msg = str(e)
        check("m.safetensors" in msg and "mean_shape" in msg, f"model without mean_shape: {msg!r}")

    print(f"selfcheck: {'FAILED ' + str(check.failed) + ' check(s)' if check.failed else 'all checks passed'}")
    return 1 if check.failed else 0


def _ckpt_name(k):
    """PyTorch parameter name -> fml checkpoint name (encoder.convs.0.weight -> encoder.conv1.weight)."""
    parts = k.split(".")
    if parts[0] == "encoder" and parts[1] in ("convs", "fcs"):
        return f"encoder.{parts[1][:-1]}{int(parts[2]) + 1}.{parts[3]}"
    return k


def crosscheck(args):
    """Compare the peer with an fml run: the loss terms fml logged at step 1 and, for a
    finetuning run with loss.glo = 0, the weights after that first AdaDelta step.

    The run must be `fml train` (zero head: mean face) or `fml finetune --from RUN0` (RUN0's
    weights) on a dataset whose train split is exactly one batch, without augmentation: the batch
    is then the whole split in some order, and every term is an order-independent batch mean.
    glo uses random skin partners (fml's xoshiro draws vs torch's), so it is reported, not
    compared, and the total is compared without it. Weight updates are compared with a float64
    evaluation of the peer: fml's f32 update must be about as close to it as the peer's own f32
    update (AdaDelta's first step divides by |g|, so it amplifies f32 rounding of small gradients)."""
    run_cfg = os.path.join(args.run, "config.toml")
    cfg = load_config(run_cfg)
    log = os.path.join(args.run, "log.jsonl")
    try:
        with open(log) as f:
            lines = [json.loads(x) for x in f if x.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise PeerError(f"{log}: {e}")
    first = [x for x in lines if x.get("step") == 1 and x.get("split") == "train"]
    if not first:
        raise PeerError(f"{log}: no train entry for step 1")
    fml_terms = first[0]["loss"]
    finetune = "photo_final" in fml_terms
    if finetune and not args.init:
        raise PeerError("a finetuning run needs --init, the run it was started --from")
    args.config, args.device, args.tf32, args.no_cudnn_benchmark, args.threads = run_cfg, "cpu", False, False, None
    args.checkpoint = args.init if finetune else None
    img, lms, conf = read_fmlds(args.dataset)
    if img.shape[0] != cfg["train"]["batch"]:
        raise PeerError(f"{args.dataset}: the train split has {img.shape[0]} records; the run's batch is "
                        f"{cfg['train']['batch']} (they must be equal for an order-free comparison)")
    ck_path = os.path.join(args.run, "checkpoint.safetensors")
    step_check = finetune and cfg["loss"]["glo"] == 0.0 and os.path.exists(ck_path)
    ck = read_safetensors(ck_path)[0] if step_check else None

    def evaluate(dtype):
        """Loss terms and (with step_check) the weight updates of one step in `dtype`."""
        _, device, model, net = setup(args, finetune)
        if ck is not None:
            # The corrective bases get no gradient at step 1 (their coefficients are the zero
            # rows of the grown head), so the run's checkpoint holds their initial values.
            with torch.no_grad():
                net.corr_geometry.copy_(ck["correctives.geometry"])
                net.corr_reflectance.copy_(ck["correctives.reflectance"])
        net = net.to(dtype)
        images = (img.permute(0, 3, 1, 2).to(dtype) / 255.0)
        obj = Objective(model, net, cfg, device)
        before = {k: v.detach().clone() for k, v in net.named_parameters()}
        _, p, lv = net(images)
        total, terms, px = obj.compute(net, p, lv, images, lms.to(dtype), conf.to(dtype))
        values = {k: float(v.detach()) for k, v in terms.items()}
        values["landmark_px"] = float(px)
        values["total"] = float(total.detach()) - (cfg["loss"]["glo"] * values["glo"] if "glo" in values else 0.0)
        updates = {}
        if ck is not None:
            opt = make_optimizer(net, cfg)
            total.backward()
            opt.step()
            updates = {k: (v.detach() - before[k]).double() for k, v in net.named_parameters()
                       if k.startswith("encoder.")}
        return values, updates, before

    ours, upd32, before = evaluate(torch.float32)
    fml_total = fml_terms["total"] - (cfg["loss"]["glo"] * fml_terms["glo"] if "glo" in fml_terms else 0.0)
    bad = 0
    print(f"{'term':<14}{'fml':>16}{'peer':>16}{'rel. diff':>12}")
    for k in sorted(fml_terms):
        f = fml_total if k == "total" else fml_terms[k]
        if k not in ours:
            print(f"{k:<14}{f:>16.7g}{'(missing)':>16}")
            bad += 1
            continue
        d = abs(ours[k] - f) / max(abs(f), 1e-6)
        ok = k == "glo" or d <= args.rtol
        bad += 0 if ok else 1
        note = "  (random partners: not compared)" if k == "glo" else ("" if ok else "  MISMATCH")
        label = "total-glo" if k == "total" and "glo" in fml_terms else k
        print(f"{label:<14}{f:>16.7g}{ours[k]:>16.7g}{d:>12.2e}{note}")
    if ck is not None:
        _, upd64, _ = evaluate(torch.float64)
        print("\nweight update of one AdaDelta step, max |update - float64 update| / max |float64 update|:")
        print(f"{'tensor':<24}{'fml f32':>12}{'peer f32':>12}")
        for k, ref in upd64.items():
            name = _ckpt_name(k)
            d_fml = ck[name].double() - before[k].double()
            scale = max(float(ref.abs().max()), 1e-30)
            e_fml = float((d_fml - ref).abs().max()) / scale
            e_peer = float((upd32[k] - ref).abs().max()) / scale
            ok = e_fml <= args.step_factor * max(e_peer, 1e-5)
            bad += 0 if ok else 1
            print(f"{name:<24}{e_fml:>12.2e}{e_peer:>12.2e}{'' if ok else '  MISMATCH'}")
        print(f"(each fml error must be at most {args.step_factor:g} x the peer's f32 error, or 1e-5)")
    elif finetune:
        print("(no weight-update comparison: it needs loss.glo = 0 and the run's checkpoint)")
    print("crosscheck: " + ("all compared values agree" if not bad else f"{bad} value(s) differ"))
    return 1 if bad else 0


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description="PyTorch (eager) peer of fml: benchmarks and self-check.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--config", required=True, help="fml run configuration (TOML)")
        p.add_argument("--model", help="native face model (.safetensors); default: the config's model.path")
        p.add_argument("--device", default="auto", help="cpu, cuda or auto [auto]")
        p.add_argument("--json", help="write the result here (fml bench's schema)")
        p.add_argument("--warmup", type=int, default=5, help="untimed iterations first [5]")
        p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions (default: full f32)")
        p.add_argument("--compile", action="store_true", help="torch.compile the model (an extra, labelled row)")
        p.add_argument("--no-cudnn-benchmark", action="store_true", help="do not autotune cuDNN algorithms")
        p.add_argument("--threads", type=int, help="CPU threads of torch (torch.set_num_threads) [torch's default]")

    pi = sub.add_parser("bench-infer", help="inference latency at batch 1 and throughput over batch sizes")
    common(pi)
    pi.add_argument("--batches", help="comma-separated batch sizes, must include 1 "
                                      "[cuda: 1,8,32,...,4096; cpu: 1,8,32]")
    pi.add_argument("--repeats", type=int, default=50, help="timed runs at batch 1 (median) [50]")
    pi.add_argument("--min-time", type=float, default=1.0, help="seconds per throughput measurement [1]")
    pi.add_argument("--max-batch-seconds", type=float, default=2.0,
                    help="stop the sweep after a batch slower than this [2]")
    pi.add_argument("--transfer", action="store_true",
                    help="include the host->device copy of the input and the copy of x back in each run")
    pi.add_argument("--checkpoint", help="fml run directory or checkpoint file to load the weights from")
    pi.add_argument("--correctives", choices=["config", "on", "off"], default="config",
                    help="evaluate the corrective level too (config: train.correctives) [config]")

    pt = sub.add_parser("bench-train", help="training images/s of a stage")
    common(pt)
    pt.add_argument("--stage", choices=["pretrain", "finetune"], default="pretrain")
    pt.add_argument("--batch", type=int, help="images per step [train.batch]")
    pt.add_argument("--steps", type=int, default=30, help="timed steps [30]")
    pt.add_argument("--dataset", help="train on this fml dataset's train split instead of synthetic crops")
    pt.add_argument("--data-on-device", action="store_true",
                    help="keep the synthetic crops on the device (no per-step upload)")

    ps = sub.add_parser("selfcheck", help="gradcheck and consistency checks on CPU")
    ps.add_argument("--model", help="also check the zero-head mean face on this native model")

    pc = sub.add_parser("crosscheck", help="compare the peer's step-1 loss terms with an fml run's log")
    pc.add_argument("--run", required=True, help="fml run directory (config.toml, log.jsonl)")
    pc.add_argument("--dataset", required=True, help="the run's dataset (train split = one batch)")
    pc.add_argument("--model", help="native face model (.safetensors); default: the config's model.path")
    pc.add_argument("--init", help="for a finetuning run: the run (or checkpoint) it started from")
    pc.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance per term [1e-4]")
    pc.add_argument("--step-factor", type=float, default=3.0,
                    help="fml's update may be this many times further from float64 than the peer's f32 [3]")

    args = ap.parse_args(argv)
    try:
        if args.cmd == "selfcheck":
            return selfcheck(args)
        if args.cmd == "crosscheck":
            return crosscheck(args)
        if getattr(args, "batch", None) is not None and args.batch <= 0:
            raise PeerError("--batch must be positive")
        if args.cmd == "bench-train" and args.steps <= 0:
            raise PeerError("--steps must be positive")
        if args.cmd == "bench-infer":
            bench_infer(args)
        else:
            bench_train(args)
        return 0
    except PeerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
