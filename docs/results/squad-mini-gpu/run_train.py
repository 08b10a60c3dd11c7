"""`quala train --config FILE` without the CLI layer (the device's typer may differ): the same TrainConfig."""

import sys

import yaml

from quala.config import from_dict
from quala.data import TrainData
from quala.train import train
from quala.train_config import TrainConfig

values = yaml.safe_load(open(sys.argv[1]))
inputs = {
    k: values.pop(k) for k in ("model", "output_dir", "train_files", "train_articles", "eval_file", "eval_articles")
}
config = from_dict(TrainConfig, values, where=sys.argv[1])
data = TrainData.load(inputs["train_files"], inputs["train_articles"], inputs["eval_file"], inputs["eval_articles"])
result = train(inputs["model"], data, inputs["output_dir"], config)
print("RESULT", result, flush=True)
