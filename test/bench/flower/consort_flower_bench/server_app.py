"""ServerApp: FedAvg over a 1M-parameter float32 array, timed per round on the server's side.

A round's time runs from configure_train (nodes sampled, messages built) to the end of
aggregate_train (every reply in, averaged). Evaluation is off (fraction_evaluate=0). After each
round the timings so far are written to run_config["out"] as JSON, so that a run that is stopped
early still leaves what it measured.
"""

import json
import time

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


class TimedFedAvg(FedAvg):
    def __init__(self, out: str, **kwargs):
        super().__init__(**kwargs)
        self.out = out
        self.rounds: list[dict] = []

    def configure_train(self, server_round, arrays, config, grid):
        self.rounds.append({"round": server_round, "start": time.time()})
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        result = super().aggregate_train(server_round, replies)
        r = self.rounds[-1]
        r["end"] = time.time()
        r["seconds"] = r["end"] - r["start"]
        r["replies"] = len(replies)
        if self.out:
            with open(self.out, "w", encoding="utf-8") as f:
                json.dump({"rounds": self.rounds}, f)
        return result


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    nodes = int(cfg["nodes"])
    arrays = ArrayRecord([np.zeros(int(cfg["parameters"]), dtype=np.float32)])
    strategy = TimedFedAvg(
        str(cfg["out"]),
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=nodes,
        min_evaluate_nodes=0,
        min_available_nodes=nodes,
    )
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=int(cfg["num-server-rounds"]))
