"""The scenario route on the real Town01, planned offline with the real ``carla`` client (no server).

The map is ``tests/data/carla/Town01.xodr.gz`` (CC-BY 4.0, see the README beside it). Every check of a
planned route is computed independently of the planner: lengths and headings from the route's polyline,
lane membership by asking the map about each point, junction membership from the junction's bounding box,
and the side of an exit from where it leaves the junction (position), not from its heading.
"""

from __future__ import annotations

import gzip
import hashlib
import math
from pathlib import Path

import carla
import numpy as np
import pytest

from sb3_av.envs.carla import CarlaBackendError, CarlaConfig, make_carla_env
from sb3_av.envs.carla.backend import CarlaBackend
from sb3_av.envs.carla.route import (
    SCENARIO_ROUTES,
    TOWN01_ROUTE,
    CarlaRouteError,
    RouteStart,
    junction_exits,
    plan_route,
    route_spec,
    spawn_transform,
    start_waypoint,
)
from tests import carla_standin as cs

DATA = Path(__file__).parent / "data" / "carla"
STEP_M = 2.0


@pytest.fixture(scope="module")
def town01():
    return carla.Map("Carla/Maps/Town01", gzip.open(DATA / "Town01.xodr.gz", "rt").read())


def _arc_length(points: np.ndarray) -> float:
    return float(np.hypot(*np.diff(points, axis=0).T).sum())


def _segment_headings(points: np.ndarray) -> np.ndarray:
    """Heading (rad, counter-clockwise) of each polyline segment, unwrapped."""
    d = np.diff(points, axis=0)
    return np.unwrap(np.arctan2(d[:, 1], d[:, 0]))


def _junction_at(town01, location) -> int | None:
    """The id of the junction whose bounding box holds ``location`` (from the map's junction list)."""
    for wp in town01.generate_waypoints(5.0):
        if wp.is_junction:
            junction = wp.get_junction()
            if junction.bounding_box.contains(location, carla.Transform()):
                return junction.id
    return None


def _walk_to_junction(start):
    """The last waypoint before ``start``'s lane enters a junction, and what ``next`` offers there."""
    here = start
    for _ in range(2000):
        branches = here.next(STEP_M)
        if len(branches) > 1 or branches[0].is_junction:
            return here, branches
        here = branches[0]
    raise AssertionError("no junction within 4 km")


def _side_of_exit(approach, branch) -> str:
    """``left``/``right``/``straight`` from where ``branch`` leaves the junction, in ``approach``'s frame."""
    wp = branch
    while wp.is_junction:
        wp = wp.next(1.0)[0]
    yaw = math.radians(approach.transform.rotation.yaw)  # CARLA: clockwise, y to the right
    a, b = approach.transform.location, wp.transform.location
    right = -(b.x - a.x) * math.sin(yaw) + (b.y - a.y) * math.cos(yaw)
    return "straight" if abs(right) < 4.0 else ("right" if right > 0 else "left")


# ---------------------------------------------------------------------------------------------- the data file
def test_shipped_town01_is_the_documented_file():
    raw = gzip.open(DATA / "Town01.xodr.gz", "rb").read()
    assert len(raw) == 973_110
    assert hashlib.md5(raw).hexdigest() == "2ecc4a7a68a55a3e06116f4748643447"
    assert (DATA / "Town01.xodr.gz").stat().st_size < 100_000
    readme = (DATA / "README.md").read_text()
    assert "CC-BY 4.0" in readme and "Computer Vision Center, Barcelona" in readme


def test_town01_parses_offline(town01):
    assert town01.name == "Carla/Maps/Town01"
    assert len(town01.generate_waypoints(10.0)) == 686
    assert len(town01.get_topology()) == 159


# ---------------------------------------------------------------------------------------------- the scenario route
def test_town01_route_is_250_m_with_one_left_turn_at_a_junction(town01):
    route = plan_route(
        start_waypoint(town01, TOWN01_ROUTE.start), TOWN01_ROUTE.length_m, STEP_M, TOWN01_ROUTE.junction_choices
    )
    waypoints = route.waypoints
    spec = route_spec(waypoints)
    pts = spec.points
    assert _arc_length(pts) == pytest.approx(250.0, abs=STEP_M)
    assert route.length_m == pytest.approx(_arc_length(pts), abs=1e-6)
    assert spec.half_lane_width_m == pytest.approx(2.0)
    assert pts[0] == pytest.approx([88.40, -218.33], abs=0.01)  # road 24, lane -1, s 10 m; y flipped from CARLA

    # every point lies on a driving lane: the map finds one there without projecting
    for wp in waypoints:
        assert wp.lane_type == carla.LaneType.Driving
        found = town01.get_waypoint(wp.transform.location, project_to_road=False, lane_type=carla.LaneType.Driving)
        assert found is not None, f"{wp.transform.location} is on no driving lane"
        assert found.transform.location.distance(wp.transform.location) < found.lane_width / 2

    # exactly one turn: all the heading change happens inside junction 87's box, +90 deg (left) +- 20
    headings = _segment_headings(pts)
    change = np.diff(headings)
    mids = [waypoints[i + 1].transform.location for i in range(len(change))]  # the point between segments i, i+1
    inside = np.array([_junction_at(town01, loc) == 87 for loc in mids])
    assert inside.any() and not inside[0] and not inside[-1]
    runs = np.flatnonzero(np.diff(inside.astype(int)) != 0)
    assert len(runs) == 2  # enters junction 87 once and leaves it once
    assert math.degrees(change[inside].sum()) == pytest.approx(90.0, abs=20.0)
    assert math.degrees(np.abs(change[~inside]).sum()) < 3.0  # straight before and after
    assert math.degrees(headings[-1] - headings[0]) == pytest.approx(90.0, abs=20.0)
    assert {_junction_at(town01, wp.transform.location) for wp in (waypoints[0], waypoints[-1])} == {None}

    # the planner's own account agrees
    assert [(p.junction_id, p.choice) for p in route.junctions] == [(87, "left")]
    assert math.degrees(route.junctions[0].turn_rad) == pytest.approx(90.0, abs=20.0)
    assert route.junctions[0].offered == ("left", "right")


def test_the_other_exit_of_the_same_junction_is_a_right_turn(town01):
    route = plan_route(start_waypoint(town01, TOWN01_ROUTE.start), 150.0, STEP_M, ("right",))
    headings = _segment_headings(route_spec(route.waypoints).points)
    assert math.degrees(headings[-1] - headings[0]) == pytest.approx(-90.0, abs=20.0)
    assert [(p.junction_id, p.choice) for p in route.junctions] == [(87, "right")]


def test_every_junction_exit_of_town01_is_classified_by_where_it_leads(town01):
    """Heading-based classes (the planner) equal position-based ones (this test) for every approach lane."""
    approaches = {}
    for wp in town01.generate_waypoints(10.0):
        if not wp.is_junction:
            approach, branches = _walk_to_junction(wp)
            approaches[(approach.road_id, approach.lane_id)] = (approach, branches)
    assert len(approaches) == 36  # Town01: 12 T-junctions, 3 arms each
    junctions = set()
    for approach, branches in approaches.values():
        exits = junction_exits(approach, branches)
        assert [e.direction for e in exits] == [_side_of_exit(approach, b) for b in branches]
        assert len({e.direction for e in exits}) == len(exits) == 2  # a T-junction: two different ways on
        for e in exits:
            ideal = {"left": 90.0, "right": -90.0, "straight": 0.0}[e.direction]
            assert math.degrees(e.turn_rad) == pytest.approx(ideal, abs=20.0)
        junctions.add(branches[0].get_junction().id)
    assert len(junctions) == 12


# ---------------------------------------------------------------------------------------------- choices the map lacks
def test_a_missing_left_is_an_error_naming_the_junction(town01):
    start = start_waypoint(town01, RouteStart(road_id=6, lane_id=1, s_m=100.0))  # westward, toward junction 87
    approach, branches = _walk_to_junction(start)
    assert sorted(_side_of_exit(approach, b) for b in branches) == ["right", "straight"]
    with pytest.raises(CarlaRouteError, match=r"Junction 87 reached from road 6 lane 1 .* no 'left' exit") as err:
        plan_route(start, 250.0, STEP_M, ("left",))
    msg = str(err.value)
    assert "right (-90 deg)" in msg and "straight (+0 deg)" in msg and "junction choice #1 of 1" in msg
    assert isinstance(err.value, CarlaBackendError)  # a setting to fix, not a lost server


def test_a_missing_left_is_an_error_from_every_such_start(town01):
    """From every start whose first junction offers no left, "left" fails, naming that junction."""
    starts = [w for w in town01.generate_waypoints(10.0) if not w.is_junction]
    no_left = 0
    for wp in starts:
        approach, branches = _walk_to_junction(wp)
        if "left" in {_side_of_exit(approach, b) for b in branches}:
            continue
        no_left += 1
        junction = branches[0].get_junction().id
        with pytest.raises(CarlaRouteError, match=rf"^Junction {junction} reached from .* no 'left' exit"):
            plan_route(wp, 500.0, STEP_M, ("left",))
    assert 0.3 < no_left / len(starts) < 0.4


def test_running_out_of_choices_means_straight_and_fails_where_there_is_none(town01):
    with pytest.raises(CarlaRouteError, match=r"Junction 87 .* no 'straight' exit .* junction_choices \(0 given\) is used up"):
        plan_route(start_waypoint(town01, TOWN01_ROUTE.start), 250.0, STEP_M, ())
    straight_on = plan_route(start_waypoint(town01, RouteStart(5, -1, 10.0)), 100.0, STEP_M, ())
    assert [(p.junction_id, p.choice) for p in straight_on.junctions] == [(87, "straight")]


def test_bad_arguments_are_rejected(town01):
    wp = start_waypoint(town01, TOWN01_ROUTE.start)
    with pytest.raises(ValueError, match="junction_choices must contain only"):
        plan_route(wp, 250.0, STEP_M, ("up",))
    with pytest.raises(ValueError, match="must be > 0"):
        plan_route(wp, 0.0, STEP_M, ("left",))
    with pytest.raises(CarlaRouteError, match=r"Carla/Maps/Town01 has no lane at road 999 lane -1"):
        start_waypoint(town01, RouteStart(999, -1, 0.0))
    with pytest.raises(CarlaRouteError, match="Sidewalk lane, not a driving lane"):
        start_waypoint(town01, RouteStart(24, -3, 10.0))


def test_spawn_transform_lifts_a_copy(town01):
    wp = start_waypoint(town01, TOWN01_ROUTE.start)
    t = spawn_transform(wp, lift_m=0.5)
    assert (t.location.x, t.location.y) == (wp.transform.location.x, wp.transform.location.y)
    assert t.location.z == pytest.approx(wp.transform.location.z + 0.5)
    assert t.rotation.yaw == pytest.approx(wp.transform.rotation.yaw)
    assert wp.transform.location.z == pytest.approx(0.0)


# ---------------------------------------------------------------------------------------------- the backend
def test_route_start_config_is_validated():
    assert CarlaConfig().route_start is None
    assert CarlaConfig(route_start=[24, -1, 10]).route_start == (24, -1, 10.0)
    for bad in ((24, -1), (24, 0, 1.0), (24, -1, -1.0), (24.5, -1, 0.0), "24,-1,10", (24, -1, math.nan)):
        with pytest.raises(ValueError, match="route_start must be None or OpenDRIVE"):
            CarlaConfig(route_start=bad)


def test_backend_starts_the_route_and_the_ego_at_route_start(monkeypatch, tmp_path):
    """On the stand-in's one-road map (a town other than Town01): the route and the ego start at road 1, lane -1, s 60 m."""
    monkeypatch.setenv("SB3_AV_CARLA_LOCK_DIR", str(tmp_path / "locks"))
    net = cs.StandinNetwork()
    net.add(town="Town02")
    values = {
        "town": "Town02",
        "npc_vehicles": 0,
        "max_reconnects": 0,
        "sensor_timeout_s": 0.2,
        "route_start": (1, -1, 60.0),
    }
    backend = CarlaBackend(values, client_factory=net.client_factory, carla_module=cs.standin_carla)
    try:
        frame = backend.reset(seed=0)
        assert backend.route.points[0] == pytest.approx([60.0, -1.75], abs=0.01)
        assert (frame.x, frame.y) == pytest.approx((60.0, -1.75), abs=0.1)
    finally:
        backend.close()
    bad = CarlaBackend(
        {**values, "route_start": (7, -1, 0.0)}, client_factory=net.client_factory, carla_module=cs.standin_carla
    )
    try:
        with pytest.raises(CarlaRouteError, match="has no lane at road 7 lane -1"):
            bad.reset(seed=0)
    finally:
        bad.close()


def test_the_town01_scenario_route_is_the_default_start():
    assert CarlaConfig().start == TOWN01_ROUTE.start == RouteStart(24, -1, 10.0)
    assert CarlaConfig().junction_choices == TOWN01_ROUTE.junction_choices
    assert CarlaConfig().route_length_m == TOWN01_ROUTE.length_m
    assert SCENARIO_ROUTES == {"Town01": TOWN01_ROUTE}
    assert CarlaConfig(route_start_index=7).start == 7  # a spawn point, when asked for
    assert CarlaConfig(route_start=(5, -1, 3.0), route_start_index=7).start == RouteStart(5, -1, 3.0)
    assert CarlaConfig(town="Town02").start == 0  # a town without a scenario route: spawn point 0
    with pytest.raises(ValueError, match="route_start_index must be None or an integer >= 0"):
        CarlaConfig(route_start_index=-1)


def test_a_scenario_env_on_town01_drives_the_route_planned_offline(town01, monkeypatch, tmp_path):
    """CarlaScenario0-v0 on the stand-in's real Town01: the route planned offline, the ego spawned at its start."""
    monkeypatch.setenv("SB3_AV_CARLA_LOCK_DIR", str(tmp_path / "locks"))
    cs.reset_process_state()
    offline = route_spec(
        plan_route(
            start_waypoint(town01, TOWN01_ROUTE.start), TOWN01_ROUTE.length_m, STEP_M, TOWN01_ROUTE.junction_choices
        ).waypoints
    )
    net = cs.StandinNetwork()
    server = net.add()
    assert server.town == "Town01" and server.map.name == "Carla/Maps/Town01"
    env = make_carla_env(
        "CarlaScenario0",
        client_factory=net.client_factory,
        carla_module=cs.standin_carla,
        npc_vehicles=0,
        sensor_timeout_s=0.2,
    )
    try:
        env.reset(seed=0)
        route = env.unwrapped.backend.route
        assert route.points.shape == offline.points.shape
        np.testing.assert_allclose(route.points, offline.points, atol=1e-6)
        assert route.half_lane_width_m == pytest.approx(offline.half_lane_width_m)
        ego = next(a for a in server.alive("vehicle.") if a.attributes["role_name"].endswith(":ego"))
        spawned = ego.get_transform()
        expected = spawn_transform(start_waypoint(town01, TOWN01_ROUTE.start))
        assert spawned.location.distance(expected.location) < 1e-3  # on the start waypoint, 0.5 m above the road
        assert spawned.location.z == pytest.approx(0.5, abs=1e-3)
        assert spawned.rotation.yaw == pytest.approx(expected.rotation.yaw, abs=1e-3)
    finally:
        env.close()
    assert server.violations == []


def test_a_spawn_point_start_whose_junction_lacks_the_choice_is_a_clear_error(town01, monkeypatch, tmp_path):
    """Asked for a spawn point (another town's way to start), a junction without the choice names both."""
    monkeypatch.setenv("SB3_AV_CARLA_LOCK_DIR", str(tmp_path / "locks"))
    cs.reset_process_state()
    net = cs.StandinNetwork()
    server = net.add()
    points = server.map.get_spawn_points()
    index = None
    for i, p in enumerate(points):  # the first spawn point whose first junction offers no left (independent check)
        approach, branches = _walk_to_junction(town01.get_waypoint(p.location))
        if "left" not in {_side_of_exit(approach, b) for b in branches}:
            index, junction = i, branches[0].get_junction().id
            break
    assert index is not None
    values = {"npc_vehicles": 0, "max_reconnects": 0, "sensor_timeout_s": 0.2, "route_start_index": index}
    values["route_length_m"] = 1000.0  # reaches the first junction from anywhere on Town01
    backend = CarlaBackend(values, client_factory=net.client_factory, carla_module=cs.standin_carla)
    try:
        with pytest.raises(CarlaRouteError) as err:
            backend.reset(seed=0)
    finally:
        backend.close()
    msg = str(err.value)
    assert msg.startswith(f"The route on Town01 from spawn point {index} (route_start_index) cannot be planned")
    assert f"Junction {junction} reached from" in msg and "no 'left' exit" in msg and "junction_choices" in msg
    assert server.alive("vehicle.") == []  # nothing spawned
