"""`LayerScores`: per-block importance from a profile, with its JSON file format and its plot."""
import dataclasses
import json
import numbers
import os
from collections.abc import Mapping

from .._checks import check_int, check_layers, check_real, ranking_of, score_list
from .._io import json_text, new_figure, save_figure, write_text

_FORMAT = "act_lora_fast.LayerScores"


@dataclasses.dataclass
class LayerScores:
    """Per-block importance scores (block order) with per-module values and what produced them.

    ``module_shapes`` maps each profiled module to ``[out_features, in_features]`` so parameter counts can
    be computed from a scores file alone (`lora_parameters`).
    """
    scores: list
    module_scores: dict = dataclasses.field(default_factory=dict)
    metric: str = "input_norm"
    block_path: str = ""
    layers_pattern: str = ""
    module_shapes: dict = dataclasses.field(default_factory=dict)
    num_tokens: int = 0
    num_batches: int = 0
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.scores = score_list(self.scores)
        for name in ("module_scores", "module_shapes", "meta"):
            if not isinstance(getattr(self, name), Mapping):
                raise TypeError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        for name, value in self.module_scores.items():
            check_real(f"module_scores[{name!r}]", value)
        for name, shape in self.module_shapes.items():
            if (isinstance(shape, (str, bytes)) or not isinstance(shape, (list, tuple)) or len(shape) != 2
                    or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0
                               for d in shape)):
                raise ValueError(f"module_shapes[{name!r}] must be [out_features, in_features] (two positive "
                                 f"ints), got {shape!r}")
        for name in ("metric", "block_path", "layers_pattern"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str, got {getattr(self, name)!r}")
        for name in ("num_tokens", "num_batches"):
            check_int(name, getattr(self, name), 0)
        self.module_scores = {str(k): float(v) for k, v in self.module_scores.items()}
        self.module_shapes = {str(k): [int(d) for d in v] for k, v in self.module_shapes.items()}
        self.meta = dict(self.meta)

    def __len__(self):
        return len(self.scores)

    @property
    def num_blocks(self):
        return len(self.scores)

    def ranking(self):
        """Block indices, most important first; ties go to the lower index."""
        return ranking_of(self.scores)

    def block_of(self, module_name):
        """The block index holding `module_name`, or None when it is outside ``block_path``."""
        prefix = self.block_path + "."
        if not module_name.startswith(prefix):
            return None
        head = module_name[len(prefix):].split(".", 1)[0]
        return int(head) if head.isdigit() else None

    def lora_parameters(self, layers=None, r=8):
        """LoRA parameters r·(in + out) over the profiled modules of `layers` (None: all blocks)."""
        if not self.module_shapes:
            raise ValueError("these scores carry no module shapes; count parameters on the model instead")
        check_int("r", r, 1)
        wanted = set(range(len(self.scores)) if layers is None else check_layers(layers, len(self.scores)))
        return sum(r * (out + inp) for name, (out, inp) in self.module_shapes.items()
                   if self.block_of(name) in wanted)

    # -------------------------------------------------------------------------------------- files
    def to_dict(self):
        return {"format": _FORMAT, **dataclasses.asdict(self)}

    def to_json(self, path=None):
        """The JSON text; with `path`, also written there atomically."""
        text = json_text(self.to_dict())
        if path is not None:
            write_text(path, text)
        return text

    @classmethod
    def from_json(cls, path_or_str):
        """Scores from a JSON file path or a JSON string (as `to_json` writes)."""
        source = "JSON text"
        if isinstance(path_or_str, os.PathLike) or (isinstance(path_or_str, str)
                                                    and not path_or_str.lstrip().startswith("{")):
            source = os.fspath(path_or_str)
            if os.path.isdir(source):
                raise IsADirectoryError(f"{source} is a directory; expected a scores JSON file")
            if not os.path.isfile(source):
                raise FileNotFoundError(f"scores file not found: {source}")
            try:
                with open(source, encoding="utf-8") as handle:
                    path_or_str = handle.read()
            except UnicodeDecodeError as err:
                raise ValueError(f"{source}: not UTF-8 text ({err})") from None
        if not isinstance(path_or_str, str):
            raise TypeError(f"from_json takes a path or a JSON string, got {type(path_or_str).__name__}")
        try:
            data = json.loads(path_or_str)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
        if not isinstance(data, dict) or "scores" not in data:
            raise ValueError(f"{source}: not a LayerScores file (expected an object with a 'scores' list)")
        if data.pop("format", _FORMAT) != _FORMAT:
            raise ValueError(f"{source}: format is not {_FORMAT!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {unknown}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{source}: {err}") from None

    def plot(self, path):
        """A PNG: per-block importance bars and the cumulative-importance curve over the ranking."""
        n, order = len(self.scores), self.ranking()
        total = sum(self.scores)
        fig, (bars, curve) = new_figure(2)
        bars.bar(range(n), self.scores, color="tab:blue")
        bars.set(xlabel="block", ylabel=self.metric, title=f"per-block importance ({self.metric})")
        bars.set_xticks(range(n))
        shares, running = [], 0.0
        for index in order:
            running += self.scores[index]
            shares.append(running / total if total else float("nan"))
        curve.plot(range(1, n + 1), shares, marker="o", color="tab:orange")
        curve.set_xticks(range(1, n + 1), [f"{k}\n(+{order[k - 1]})" for k in range(1, n + 1)], fontsize=7)
        curve.set(xlabel="top-k blocks (+ block added)", ylabel="cumulative share of importance",
                  ylim=(0, 1.02), title="cumulative importance")
        curve.grid(alpha=0.3)
        return save_figure(fig, path)
