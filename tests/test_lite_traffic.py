"""The Lite traffic model: MOBIL lane changes (against highway-env's own rule), slow NPCs ahead of the ego, and
the scenario defaults that make LiteScenario0/1/2 three levels of difficulty."""

from __future__ import annotations

import itertools
import os

import gymnasium as gym
import numpy as np
import pytest

import sb3_av  # noqa: F401  (registers the envs)
from sb3_av.envs.core import DrivingEnv

os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")


def _backend(env_id: str = "LiteScenario0-v0", **kwargs):  # type: ignore[no-untyped-def]
    env = gym.make(env_id, **kwargs).unwrapped
    assert isinstance(env, DrivingEnv)
    return env.backend


def _place(backend, npc, chain: int, s: float, speed: float, target_speed: float) -> None:  # type: ignore[no-untyped-def]
    """Put an NPC on a chain at arc length ``s`` (first straight segment), with a speed and a desired speed."""
    position, heading = backend.road.position(chain, s)
    npc.position, npc.heading, npc.speed, npc.target_speed = np.array(position), heading, speed, target_speed
    npc.chain = npc.target_chain = chain
    npc.segment, npc.lane = 0, backend.road.lane(chain, 0)
    npc.update_chain_position()


@pytest.mark.parametrize(
    ("front_speed", "rear_gap", "rear_speed", "new_front_gap"),
    list(itertools.product((3.0, 9.0), (6.0, 12.0, 30.0), (6.0, 11.0), (15.0, 60.0))),
)
def test_mobil_decision_matches_highway_env(
    front_speed: float, rear_gap: float, rear_speed: float, new_front_gap: float
) -> None:
    """Our chain-based MOBIL gain, thresholded as upstream, gives highway-env 1.12.1's ``IDMVehicle.mobil`` decision."""
    from highway_env.vehicle.behavior import IDMVehicle

    from sb3_av.envs.lite.backend import mobil_gain

    backend = _backend(npc_vehicles=4)
    backend.reset(seed=0)
    me, front, new_rear, new_front = backend.npcs
    _place(backend, me, 1, 40.0, 8.0, 10.0)
    _place(backend, front, 1, 55.0, front_speed, front_speed)
    _place(backend, new_rear, 2, 40.0 - rear_gap, rear_speed, 10.0)
    _place(backend, new_front, 2, 40.0 + new_front_gap, 9.0, 9.0)
    backend._hw_road.vehicles = [me, front, new_rear, new_front]  # the ego (100 m ahead) is not in upstream's view
    upstream = IDMVehicle.mobil(me, backend.road.lane_index(2, 0))

    chains = backend._chain_entries()
    chains = [[e for e in entries if e[1] != 0] for entries in chains]  # nor in ours
    targets = {k: npc.target_speed for k, npc in enumerate(backend.npcs, start=1)}
    gain = mobil_gain((me.chain_s, 1, me.speed), me.target_speed, chains[1], chains[2], targets)
    ours = gain is not None and gain >= me.LANE_CHANGE_MIN_ACC_GAIN
    assert ours == upstream


def test_mobil_cases_cover_both_answers_and_the_safety_veto() -> None:
    """The parametrised cases above are not all the same answer: a slow leader and a free lane change; a close,
    fast new follower vetoes (None); a fast leader stays."""
    from sb3_av.envs.lite.backend import mobil_gain

    targets = {1: 10.0, 2: 3.0, 3: 10.0}
    old = [(40.0, 1, 8.0), (55.0, 2, 3.0)]
    assert mobil_gain((40.0, 1, 8.0), 10.0, old, [], targets) > 0.2  # free lane beside a slow leader
    assert mobil_gain((40.0, 1, 8.0), 10.0, old, [(34.0, 3, 11.0)], targets) is None  # new follower brakes > 2 m/s^2
    fast_old = [(40.0, 1, 8.0), (80.0, 2, 9.0)]
    assert mobil_gain((40.0, 1, 8.0), 10.0, fast_old, [(55.0, 3, 9.0)], {1: 10.0, 2: 9.0, 3: 9.0}) < 0.2  # closer leader


def test_npcs_change_lanes_and_end_in_a_lane() -> None:
    """With lane changes on, NPCs move between chains over 20 s of LiteScenario2 traffic and finish each change
    near a lane centre; with them off (scenario 0) no NPC leaves its chain."""
    for env_id, changes_expected in (("LiteScenario2-v0", True), ("LiteScenario0-v0", False)):
        backend = _backend(env_id)
        backend.reset(seed=3)
        start_chains = [npc.chain for npc in backend.npcs]
        changed = set()
        for _ in range(400):
            backend.step(0.0, 0.0, 1.0)  # the ego stays put
            changed |= {k for k, npc in enumerate(backend.npcs) if npc.chain != start_chains[k]}
        if changes_expected:
            assert len(changed) >= 3
            settled = [npc for npc in backend.npcs if not npc.changing_lane]
            half_lane = backend.road.lane_width_m / 2
            assert all(abs(npc.lateral) < half_lane for npc in settled)
        else:
            assert not changed


def test_slow_npcs_start_ahead_on_the_route_lane_and_keep_it() -> None:
    backend = _backend("LiteScenario2-v0", slow_npc_speed_range_ms=[6.0, 6.5])
    backend.reset(seed=11)
    from sb3_av.envs.lite.road import ROUTE_START_M

    slow = [npc for npc in backend.npcs if 6.0 <= npc.target_speed <= 6.5 and not npc.lane_changes]
    assert len(slow) == 2
    ahead = sorted(npc.chain_s - ROUTE_START_M for npc in slow)
    assert all(npc.chain == backend.route_lane for npc in slow)
    assert 35.0 <= ahead[0] <= 60.0 and 25.0 <= ahead[1] - ahead[0] <= 45.0
    for _ in range(200):
        backend.step(0.0, 0.0, 1.0)
    assert all(npc.chain == backend.route_lane and not npc.changing_lane for npc in slow)
    assert all(npc.speed <= 6.5 + 1e-6 for npc in slow)


def test_scenario_traffic_defaults_and_overrides() -> None:
    b0, b1, b2 = (_backend(f"LiteScenario{i}-v0") for i in range(3))
    assert (b0.npc_lane_changes, b0.slow_npcs_ahead) == (False, 0)
    assert (b1.npc_lane_changes, b1.slow_npcs_ahead) == (True, 1)
    assert (b2.npc_lane_changes, b2.slow_npcs_ahead) == (True, 2)
    b2_old = _backend("LiteScenario2-v0", npc_lane_changes=False, slow_npcs_ahead=0)
    assert (b2_old.npc_lane_changes, b2_old.slow_npcs_ahead) == (False, 0)
    assert _backend("LiteScenario2-v0", npc_vehicles=1).slow_npcs_ahead == 1  # part of npc_vehicles
    assert _backend("LiteScenario2-v0", npc_vehicles=0).slow_npcs_ahead == 0  # the empty road stays empty


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"npc_lane_changes": "yes"}, "npc_lane_changes must be true or false"),
        ({"slow_npcs_ahead": -1}, "slow_npcs_ahead must be an integer >= 0"),
        ({"slow_npcs_ahead": 1.5}, "slow_npcs_ahead must be an integer >= 0"),
        ({"slow_npc_speed_range_ms": [7.0, 6.0]}, r"slow_npc_speed_range_ms must be \[low, high\]"),
    ],
)
def test_bad_traffic_settings_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gym.make("LiteScenario1-v0", **kwargs)
