"""Rendered industrial parts with pose and lighting jitter, and geometric defects.

A part is drawn in its own frame at twice the output size (``draw(geometry, side)`` -> RGB and
coverage), then posed (rotation, shift, scale), downsampled (area filter: anti-aliased edges),
laid over the conveyor background, lit (gain and a linear gradient) and given sensor noise.
Pose, light and noise form the ``Scene``; a geometric defect is the same scene rendered from a
modified geometry, so every pixel it does not touch is byte-identical to the clean render.

Parts (``PARTS``): ``gear`` (16 teeth, bore with keyway, five lightening holes; any rotation),
``washer`` (zinc-plated ring with lathe marks; any rotation), ``pcb`` (a fixed board layout with
ICs, resistors, capacitors, traces and silkscreen; +-3 degrees), ``label`` (a printed label with
text, a barcode and a logo on a plastic housing; +-4 degrees).

Geometric defects (``Part.defects``): ``missing`` (gear: one or two teeth; washer: a chunk
broken off along a chord; pcb: a component, its pads left bare; label: a printed character or
barcode bar), ``deformation`` (gear: a bent or broken tooth; washer: a local dent or bulge of a
rim), ``extra`` (pcb: a component where none belongs), ``misplaced`` (pcb: a component turned or
shifted), ``misprint`` (label: a text line printed out of register, or a wrong character).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache

import cv2
import numpy as np

from stpm_edge.data.synth.textures import illumination

Geometry = dict
Modifier = Callable[[Geometry, np.random.Generator, bool], Geometry]


@dataclass(frozen=True)
class Scene:
    """Everything of one shot that is not the part's geometry (shared by clean and defective)."""

    angle: float  # degrees
    shift: tuple[float, float]  # fraction of the side
    scale: float
    gain: float
    light_seed: int
    noise_seed: int
    noise_sigma: float


@dataclass
class Part:
    """A renderable part: nominal geometry, drawer, pose range and geometric defect modifiers."""

    name: str
    nominal: Callable[[], Geometry]
    draw: Callable[[Geometry, int], tuple[np.ndarray, np.ndarray]]
    max_angle: float  # degrees either way; 180 = any rotation
    defects: dict[str, Modifier] = field(default_factory=dict)
    surface_defects: tuple[str, ...] = ()

    def scene(self, rng: np.random.Generator) -> Scene:
        return Scene(
            angle=float(rng.uniform(-self.max_angle, self.max_angle)),
            shift=(float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04))),
            scale=float(rng.uniform(0.97, 1.03)),
            gain=float(rng.uniform(0.9, 1.1)),
            light_seed=int(rng.integers(2**31)),
            noise_seed=int(rng.integers(2**31)),
            noise_sigma=float(rng.uniform(1.5, 2.5)),
        )


def render(
    part: Part, geometry: Geometry, scene: Scene, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``part`` in ``scene``: ``(uint8 (S, S, 3) RGB, bool (S, S) fully covered surface)``."""
    side = 2 * size
    rgb, cover = part.draw(geometry, side)
    matrix = cv2.getRotationMatrix2D((side / 2, side / 2), scene.angle, scene.scale)
    matrix[:, 2] += np.array(scene.shift) * side
    flags = {"flags": cv2.INTER_LINEAR, "borderMode": cv2.BORDER_REFLECT}
    rgb = cv2.resize(
        cv2.warpAffine(rgb, matrix, (side, side), **flags),
        (size, size),
        interpolation=cv2.INTER_AREA,
    )
    cover = cv2.warpAffine(cover, matrix, (side, side), flags=cv2.INTER_LINEAR)
    cover = cv2.resize(cover, (size, size), interpolation=cv2.INTER_AREA)[:, :, None]
    image = _conveyor(size) * (1.0 - cover) + rgb * cover
    light = illumination(np.random.default_rng(scene.light_seed), size, 0.12) * scene.gain
    noise = np.random.default_rng(scene.noise_seed).normal(0.0, scene.noise_sigma, image.shape)
    out = np.clip(np.rint(image * light[:, :, None] + noise), 0, 255).astype(np.uint8)
    surface = cv2.erode((cover[:, :, 0] > 0.999).astype(np.uint8), np.ones((5, 5), np.uint8))
    return out, surface.astype(bool)


@lru_cache(maxsize=4)
def _conveyor(size: int) -> np.ndarray:
    """Dark grey belt with a fine fabric texture: ``float32 (S, S, 3)``."""
    rng = np.random.default_rng(7)
    fabric = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 1.2)
    gray = 58.0 + 10.0 * fabric / fabric.std()
    return np.repeat(gray[:, :, None], 3, axis=2).astype(np.float32)


def _polar_grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) - side / 2 + 0.5
    return np.hypot(xx, yy), np.arctan2(yy, xx)


def _outline(radius: np.ndarray, side: int) -> np.ndarray:
    """Filled polar outline ``radius(theta)`` (sampled evenly) centred in the frame: ``uint8 0/1``."""
    theta = np.linspace(-np.pi, np.pi, len(radius), endpoint=False)
    pts = np.stack([side / 2 + radius * np.cos(theta), side / 2 + radius * np.sin(theta)], axis=1)
    canvas = np.zeros((side, side), np.uint8)
    cv2.fillPoly(canvas, [np.rint(pts * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return canvas


def _metal(cover: np.ndarray, r: np.ndarray, side: int, base: float, groove: float) -> np.ndarray:
    """Machined metal: lathe grooves (concentric) and a darker bevel along every edge."""
    dist = cv2.distanceTransform(cover, cv2.DIST_L2, 3)
    bevel = 0.72 + 0.28 * np.clip(dist / (0.015 * side), 0.0, 1.0)
    tone = (base + groove * np.sin(2 * np.pi * r / (0.011 * side))) * bevel
    return np.clip(tone, 0, 255).astype(np.float32)


# -- gear --------------------------------------------------------------------------------------------
_TEETH = 16


def _gear_nominal() -> Geometry:
    return {"tip": np.ones(_TEETH), "shift": np.zeros(_TEETH)}


def _gear_draw(geometry: Geometry, side: int) -> tuple[np.ndarray, np.ndarray]:
    theta = np.linspace(-np.pi, np.pi, 4096, endpoint=False)
    pitch = 2 * np.pi / _TEETH
    k = np.rint(theta / pitch).astype(int) % _TEETH
    local = np.angle(np.exp(1j * (theta - k * pitch))) / pitch - geometry["shift"][k]
    profile = np.clip((0.26 - np.abs(local)) / 0.1, 0.0, 1.0)  # trapezoid tooth
    root, tip = 0.31 * side, 0.37 * side
    cover = _outline(root + (tip - root) * geometry["tip"][k] * profile, side)
    r, phi = _polar_grid(side)
    cover[r < 0.07 * side] = 0  # bore
    cover[(np.abs(r * np.sin(phi)) < 0.015 * side) & (r * np.cos(phi) > 0) & (r < 0.09 * side)] = 0
    for j in range(5):  # lightening holes
        a = 2 * np.pi * j / 5 + 0.3
        cx, cy = side / 2 + 0.2 * side * np.cos(a), side / 2 + 0.2 * side * np.sin(a)
        cv2.circle(
            cover, (int(cx * 16), int(cy * 16)), int(0.045 * side * 16), 0, -1, cv2.LINE_8, 4
        )
    tone = _metal(cover, r, side, 170.0, 6.0) + 14.0 * ((r > 0.1 * side) & (r < 0.14 * side))
    rgb = tone[:, :, None] * np.array([1.0, 0.98, 0.93], np.float32)
    return rgb.astype(np.float32), cover.astype(np.float32)


def _gear_missing(g: Geometry, rng: np.random.Generator, large: bool) -> Geometry:
    k = int(rng.integers(_TEETH))
    tip = g["tip"].copy()
    tip[[k, (k + 1) % _TEETH] if large else [k]] = 0.0
    return {**g, "tip": tip}


def _gear_deformation(g: Geometry, rng: np.random.Generator, large: bool) -> Geometry:
    k = int(rng.integers(_TEETH))
    tip, shift = g["tip"].copy(), g["shift"].copy()
    if rng.random() < 0.5:  # broken tip
        tip[k] = rng.uniform(0.2, 0.5) if large else rng.uniform(0.55, 0.75)
    else:  # bent tooth
        shift[k] = rng.choice([-1, 1]) * (
            rng.uniform(0.12, 0.2) if large else rng.uniform(0.06, 0.1)
        )
    return {**g, "tip": tip, "shift": shift}


# -- washer -------------------------------------------------------------------------------------------
def _washer_nominal() -> Geometry:
    return {"chip": None, "dent": None}


def _washer_draw(geometry: Geometry, side: int) -> tuple[np.ndarray, np.ndarray]:
    theta = np.linspace(-np.pi, np.pi, 4096, endpoint=False)
    outer = np.full_like(theta, 0.38 * side)
    inner = np.full_like(theta, 0.17 * side)
    if geometry["dent"] is not None:  # (angle, amplitude as a fraction of the side, width, rim)
        a, amp, width, rim = geometry["dent"]
        bump = amp * side * np.exp(-((np.angle(np.exp(1j * (theta - a))) / width) ** 2))
        (outer if rim == "outer" else inner)[:] += bump
    if geometry["chip"] is not None:  # (angle, depth as a fraction of the side): a chord cut
        a, depth = geometry["chip"]
        delta = np.angle(np.exp(1j * (theta - a)))
        chord = (0.38 - depth) * side / np.maximum(np.cos(delta), 1e-3)
        outer = np.where(np.abs(delta) < np.pi / 2, np.minimum(outer, chord), outer)
    cover = _outline(outer, side) * (1 - _outline(inner, side))
    r, _ = _polar_grid(side)
    tone = _metal(cover.astype(np.uint8), r, side, 182.0, 5.0)
    rgb = tone[:, :, None] * np.array([0.97, 0.99, 1.0], np.float32)  # zinc: a cool grey
    return rgb.astype(np.float32), cover.astype(np.float32)


def _washer_missing(g: Geometry, rng: np.random.Generator, large: bool) -> Geometry:
    depth = rng.uniform(0.025, 0.04) if large else rng.uniform(0.01, 0.02)
    return {**g, "chip": (rng.uniform(-np.pi, np.pi), depth)}


def _washer_deformation(g: Geometry, rng: np.random.Generator, large: bool) -> Geometry:
    amp = (rng.uniform(0.02, 0.035) if large else rng.uniform(0.008, 0.015)) * rng.choice([-1, 1])
    rim = "outer" if rng.random() < 0.6 else "inner"
    return {**g, "dent": (rng.uniform(-np.pi, np.pi), amp, rng.uniform(0.15, 0.35), rim)}


# -- pcb ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Component:
    kind: str  # "ic", "res", "cap"
    x: float  # centre, fraction of the side
    y: float
    w: float
    h: float
    angle: float = 0.0  # degrees


_FREE_SPOTS = ((0.22, 0.78), (0.52, 0.86), (0.84, 0.55), (0.16, 0.2), (0.6, 0.16))


@lru_cache(maxsize=1)
def _pcb_layout() -> tuple[Component, ...]:
    parts = [Component("ic", 0.35, 0.38, 0.2, 0.12), Component("ic", 0.68, 0.66, 0.12, 0.16, 90)]
    for i, (x, y) in enumerate(((0.7, 0.3), (0.78, 0.3), (0.3, 0.62), (0.4, 0.62), (0.3, 0.78))):
        parts.append(Component("res" if i % 2 == 0 else "cap", x, y, 0.06, 0.03, 90 * (i < 2)))
    parts.append(Component("cap", 0.52, 0.55, 0.05, 0.025))
    parts.append(Component("res", 0.85, 0.8, 0.06, 0.03, 90))
    return tuple(parts)


def _box(c: Component, side: int, w: float, h: float, dx: float = 0.0) -> np.ndarray:
    """Corners of a ``w x h`` box (fractions) at offset ``dx`` along the component's axis."""
    a = np.radians(c.angle)
    u, v = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
    centre = np.array([c.x, c.y]) + dx * u
    corners = [
        centre + sx * w / 2 * u + sy * h / 2 * v for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))
    ]
    return np.rint(np.array(corners) * side * 16).astype(np.int32)


def _fill(canvas: np.ndarray, corners: np.ndarray, colour) -> None:
    cv2.fillPoly(canvas, [corners], tuple(float(c) for c in colour), cv2.LINE_AA, 4)


def _draw_pads(canvas: np.ndarray, c: Component, side: int) -> None:
    if c.kind == "ic":
        for j in range(6):  # gull-wing pins on both long sides
            for sy in (-1, 1):
                off = (j - 2.5) / 6 * c.w
                pin = Component(
                    "pin",
                    *(np.array([c.x, c.y]) + _rot(c.angle) @ [off, sy * c.h * 0.62]),
                    0.018,
                    0.045,
                    c.angle,
                )
                _fill(canvas, _box(pin, side, pin.w, pin.h), (205, 200, 185))
    else:
        for sx in (-1, 1):
            _fill(canvas, _box(c, side, c.w * 0.3, c.h * 1.25, sx * c.w * 0.42), (205, 200, 185))


def _rot(angle: float) -> np.ndarray:
    a = np.radians(angle)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def _draw_body(canvas: np.ndarray, c: Component, side: int) -> None:
    if c.kind == "ic":
        _fill(canvas, _box(c, side, c.w, c.h), (38, 38, 42))
        dot = np.rint(
            (np.array([c.x, c.y]) + _rot(c.angle) @ [-0.38 * c.w, -0.2 * c.h]) * side * 16
        )
        cv2.circle(
            canvas,
            tuple(int(v) for v in dot),
            int(0.008 * side * 16),
            (150, 150, 150),
            -1,
            cv2.LINE_AA,
            4,
        )
    else:
        body = (30, 30, 34) if c.kind == "res" else (185, 145, 90)
        _fill(canvas, _box(c, side, c.w * 0.62, c.h), body)
        for sx in (-1, 1):  # tinned end caps
            _fill(canvas, _box(c, side, c.w * 0.2, c.h, sx * c.w * 0.4), (190, 190, 185))


@lru_cache(maxsize=2)
def _pcb_board(side: int) -> np.ndarray:
    """The bare board: solder mask with weave, traces, silkscreen, and every component's pads."""
    rng = np.random.default_rng(11)  # the product's design, the same in every image
    board = np.empty((side, side, 3), np.uint8)
    board[:] = (34, 112, 62)
    for _ in range(14):  # Manhattan traces under the solder mask: lighter, yellowish green
        pts = [rng.uniform(0.05, 0.95, 2)]
        for step in range(4):
            move = rng.uniform(-0.3, 0.3) * (np.array([1, 0]) if step % 2 else np.array([0, 1]))
            pts.append(np.clip(pts[-1] + move, 0.03, 0.97))
        poly = np.rint(np.array(pts) * side * 16).astype(np.int32)
        cv2.polylines(board, [poly], False, (70, 140, 60), int(0.009 * side), cv2.LINE_AA, 4)
    for c in _pcb_layout():
        _draw_pads(board, c, side)
    for text, (x, y) in (("U1", (0.2, 0.28)), ("U2", (0.78, 0.5)), ("R3", (0.22, 0.7))):
        org = (int(x * side), int(y * side))
        font, white = cv2.FONT_HERSHEY_SIMPLEX, (225, 230, 225)
        cv2.putText(board, text, org, font, side / 900, white, max(1, side // 400), cv2.LINE_AA)
    return board


@lru_cache(maxsize=4)
def _grain(side: int, seed: int, sigma: float, amplitude: float) -> np.ndarray:
    """A fixed fine surface grain (part of the product's look): ``float32 (S, S, 1)``."""
    noise = np.random.default_rng(seed).normal(0, 1, (side, side)).astype(np.float32)
    grain = cv2.GaussianBlur(noise, (0, 0), sigma)
    return (amplitude * grain / grain.std())[:, :, None]


def _pcb_nominal() -> Geometry:
    return {"components": _pcb_layout(), "extra": ()}


def _pcb_draw(geometry: Geometry, side: int) -> tuple[np.ndarray, np.ndarray]:
    board = _pcb_board(side).copy()
    for c in geometry["extra"]:
        _draw_pads(board, c, side)
    for c in (*geometry["components"], *geometry["extra"]):
        if c is not None:
            _draw_body(board, c, side)
    rgb = board.astype(np.float32) + _grain(side, 11, 2.0, 5.0)
    return rgb, np.ones((side, side), np.float32)


def _pcb_missing(g: Geometry, rng: np.random.Generator, large: bool) -> Geometry:
    comps = list(g["components"])
    comps[int(rng.integers(len(comps)))] = None
    return {**g, "components": tuple(comps)}


def _pcb_extra(g: Geometry, rng: np.random.Generator, large: bool) -> Geometry:
    x, y = _FREE_SPOTS[int(rng.integers(len(_FREE_SPOTS)))] + rng.uniform(-0.02, 0.02, 2)
    kind = "res" if rng.random() < 0.5 else "cap"
    scale = 1.0 if large else 0.7
    return {**g, "extra": (Component(kind, x, y, 0.06 * scale, 0.03 * scale, rng.uniform(0, 180)),)}


def _pcb_misplaced(g: Geometry, rng: np.random.Generator, large: bool) -> Geometry:
    comps = list(g["components"])
    k = int(rng.integers(len(comps)))
    turn = rng.uniform(10, 25) if large else rng.uniform(4, 9)
    move = rng.uniform(-1, 1, 2) * (0.015 if large else 0.006)
    comps[k] = replace(
        comps[k],
        x=comps[k].x + move[0],
        y=comps[k].y + move[1],
        angle=comps[k].angle + turn * rng.choice([-1, 1]),
    )
    return {**g, "components": tuple(comps)}


# -- label --------------------------------------------------------------------------------------------
_LINES = ("STPM EDGE 24V", "LOT 2611-07  QC", "MADE IN EU  IP65")
_BARS = tuple(int(b) for b in np.random.default_rng(5).integers(1, 4, 34))  # bar widths, units


def _label_nominal() -> Geometry:
    return {"skip_char": None, "skip_bar": None, "offset": None, "swap": None}


def _label_draw(geometry: Geometry, side: int) -> tuple[np.ndarray, np.ndarray]:
    image = np.empty((side, side, 3), np.uint8)
    image[:] = (72, 92, 122)
    x0, y0, x1, y1 = (np.array([0.11, 0.2, 0.89, 0.8]) * side).astype(int)
    cv2.rectangle(image, (x0, y0), (x1, y1), (236, 232, 218), -1)
    cv2.rectangle(
        image,
        (x0 + side // 80, y0 + side // 80),
        (x1 - side // 80, y1 - side // 80),
        (30, 30, 30),
        max(1, side // 220),
    )
    cv2.circle(
        image,
        (int(0.78 * side), int(0.31 * side)),
        int(0.05 * side),
        (200, 40, 35),
        -1,
        cv2.LINE_AA,
    )
    _label_text(image, geometry, side)
    _label_barcode(image, geometry, side)
    rgb = image.astype(np.float32) + _grain(side, 13, 1.5, 4.0)
    return rgb, np.ones((side, side), np.float32)


def _label_text(image: np.ndarray, geometry: Geometry, side: int) -> None:
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, side / 560, max(1, side // 200)
    index = 0
    for row, line in enumerate(_LINES):
        x, y = 0.16 * side, (0.34 + 0.1 * row) * side
        if geometry["offset"] is not None and geometry["offset"][0] == row:
            x, y = x + geometry["offset"][1] * side, y + geometry["offset"][2] * side
        for ch in line:
            if geometry["swap"] is not None and geometry["swap"][0] == index:
                ch = geometry["swap"][1]
            if index != geometry["skip_char"] and ch != " ":
                cv2.putText(
                    image,
                    ch,
                    (int(round(x)), int(round(y))),
                    font,
                    scale,
                    (25, 25, 30),
                    thick,
                    cv2.LINE_AA,
                )
            x += (
                cv2.getTextSize(line[index - sum(map(len, _LINES[:row]))], font, scale, thick)[0][0]
                + side * 0.004
            )
            index += 1


def _label_barcode(image: np.ndarray, geometry: Geometry, side: int) -> None:
    unit, x = side * 0.0045, 0.16 * side
    for j, width in enumerate(_BARS):
        if j % 2 == 0 and j != geometry["skip_bar"]:
            cv2.rectangle(
                image,
                (int(x), int(0.64 * side)),
                (int(x + width * unit) - 1, int(0.75 * side)),
                (20, 20, 25),
                -1,
            )
        x += width * unit


def _label_chars() -> list[int]:
    flat = "".join(_LINES)
    return [i for i, ch in enumerate(flat) if ch != " "]


def _label_missing(g: Geometry, rng: np.random.Generator, large: bool) -> Geometry:
    if rng.random() < 0.7:
        return {**g, "skip_char": int(rng.choice(_label_chars()))}
    return {**g, "skip_bar": int(rng.integers(len(_BARS) // 2)) * 2}


def _label_misprint(g: Geometry, rng: np.random.Generator, large: bool) -> Geometry:
    if rng.random() < 0.5:  # a line out of register
        shift = rng.uniform(0.01, 0.02) if large else rng.uniform(0.004, 0.008)
        angle = rng.uniform(0, 2 * np.pi)
        return {
            **g,
            "offset": (
                int(rng.integers(len(_LINES))),
                shift * np.cos(angle),
                shift * np.sin(angle),
            ),
        }
    index = int(rng.choice(_label_chars()))
    wrong = "".join(_LINES)[index]
    while wrong == "".join(_LINES)[index]:
        wrong = "0123456789ABCDEFGHKLMNPRSTUVXZ"[int(rng.integers(30))]
    return {**g, "swap": (index, wrong)}


PARTS: dict[str, Part] = {
    "gear": Part(
        "gear",
        _gear_nominal,
        _gear_draw,
        180.0,
        {"missing": _gear_missing, "deformation": _gear_deformation},
        ("scratch", "stain_colour", "stain_intensity", "contamination"),
    ),
    "washer": Part(
        "washer",
        _washer_nominal,
        _washer_draw,
        180.0,
        {"missing": _washer_missing, "deformation": _washer_deformation},
        ("crack", "stain_colour", "stain_intensity", "scratch"),
    ),
    "pcb": Part(
        "pcb",
        _pcb_nominal,
        _pcb_draw,
        3.0,
        {"missing": _pcb_missing, "extra": _pcb_extra, "misplaced": _pcb_misplaced},
        ("stain_colour", "stain_intensity", "contamination"),
    ),
    "label": Part(
        "label",
        _label_nominal,
        _label_draw,
        4.0,
        {"missing": _label_missing, "misprint": _label_misprint},
        ("stain_colour", "stain_intensity", "scratch", "contamination"),
    ),
}
