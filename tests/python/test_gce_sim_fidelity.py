"""Fidelity of gce-sim, proven with Google's own client.

Drives a gce-sim binary with google-api-python-client and its bundled Compute v1
discovery document, exactly as a program written against real GCE would. If the sim
answers something that client cannot parse or misroutes, these tests fail.

Run: GCE_SIM_BIN=target/debug/gce-sim pytest tests/python
Needs: pip install google-api-python-client pytest
"""

import json
import os
import re
import subprocess
import time
import urllib.request
import uuid

import httplib2
import pytest
from googleapiclient import discovery
from googleapiclient.errors import HttpError

PROJECT = "fidelity"
ZONE_A = "us-central1-a"
ZONE_B = "us-central1-b"
PREEMPTED = "compute.instances.preempted"
DEADLINE_S = 20


def _repo_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def sim():
    """A fresh gce-sim on a free port: (compute client, control root URL)."""
    binary = os.environ.get("GCE_SIM_BIN", os.path.join(_repo_root(), "target", "debug", "gce-sim"))
    if not os.path.exists(binary):
        pytest.fail(f"gce-sim binary not found at {binary}; build it or set GCE_SIM_BIN")
    proc = subprocess.Popen(
        [
            binary,
            "--listen", "127.0.0.1:0",
            "--zones", f"{ZONE_A},{ZONE_B}",
            "--capacity", "3",
            "--op-delay-ms", "100",
            "--boot-delay-ms", "100",
            "--seed", "7",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"listening on (http://\S+)", line)
        assert match, f"unexpected first line from gce-sim: {line!r}"
        root = match.group(1)
        compute = discovery.build(
            "compute",
            "v1",
            static_discovery=True,
            http=httplib2.Http(timeout=30),
            client_options={"api_endpoint": f"{root}/compute/v1/"},
            cache_discovery=False,
        )
        yield compute, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def control(root, path, body=None):
    """Calls gce-sim's control API and returns the decoded reply."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{root}/sim/v1/{path}", data=data, method="POST" if data else "GET")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def instance_body(name, zone=ZONE_A, **scheduling):
    return {
        "name": name,
        "machineType": f"zones/{zone}/machineTypes/e2-small",
        "labels": {"pm-pool": "web"},
        "scheduling": {"preemptible": True, **scheduling},
        "disks": [{"boot": True, "initializeParams": {"sourceImage": "projects/debian-cloud/global/images/family/debian-12"}}],
        "networkInterfaces": [{"network": "global/networks/default"}],
    }


def wait_done(compute, operation, zone=ZONE_A):
    """zoneOperations.wait until DONE, bounded."""
    deadline = time.monotonic() + DEADLINE_S
    while operation["status"] != "DONE":
        assert time.monotonic() < deadline, f"operation {operation['name']} not DONE"
        operation = compute.zoneOperations().wait(project=PROJECT, zone=zone, operation=operation["name"]).execute()
    return operation


def eventually(condition, what):
    """Polls `condition` until it returns a truthy value, bounded."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def insert(compute, name, zone=ZONE_A, **scheduling):
    return compute.instances().insert(
        project=PROJECT, zone=zone, body=instance_body(name, zone, **scheduling), requestId=str(uuid.uuid4())
    ).execute()


def test_insert_then_wait_and_get(sim):
    compute, _ = sim
    op = insert(compute, "web-1")
    assert op["kind"] == "compute#operation"
    assert op["operationType"] == "insert"
    assert op["status"] in ("PENDING", "RUNNING")
    assert op["targetLink"].endswith(f"/zones/{ZONE_A}/instances/web-1")
    done = wait_done(compute, op)
    assert "error" not in done
    assert done["progress"] == 100 and done["endTime"]

    instance = compute.instances().get(project=PROJECT, zone=ZONE_A, instance="web-1").execute()
    assert instance["kind"] == "compute#instance"
    assert instance["name"] == "web-1"
    assert isinstance(instance["id"], str) and instance["id"].isdigit()
    assert instance["zone"].endswith(f"/projects/{PROJECT}/zones/{ZONE_A}")
    assert instance["selfLink"].endswith(f"/zones/{ZONE_A}/instances/web-1")
    assert instance["machineType"].endswith(f"/zones/{ZONE_A}/machineTypes/e2-small")
    assert instance["labels"] == {"pm-pool": "web"}
    assert instance["labelFingerprint"]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$", instance["creationTimestamp"])
    assert instance["scheduling"]["preemptible"] is True
    assert instance["disks"][0]["boot"] is True
    assert instance["status"] in ("PROVISIONING", "STAGING", "RUNNING")
    eventually(
        lambda: compute.instances().get(project=PROJECT, zone=ZONE_A, instance="web-1").execute()["status"] == "RUNNING",
        "web-1 RUNNING",
    )


def test_request_id_makes_insert_idempotent(sim):
    compute, _ = sim
    request_id = str(uuid.uuid4())
    body = instance_body("web-idem")
    first = compute.instances().insert(project=PROJECT, zone=ZONE_A, body=body, requestId=request_id).execute()
    again = compute.instances().insert(project=PROJECT, zone=ZONE_A, body=body, requestId=request_id).execute()
    assert first["name"] == again["name"]
    items = compute.instances().list(project=PROJECT, zone=ZONE_A).execute().get("items", [])
    assert [i["name"] for i in items] == ["web-idem"]


def test_list_with_label_filter_and_pagination(sim):
    compute, _ = sim
    for name in ("web-a", "web-b"):
        wait_done(compute, insert(compute, name))
    other = instance_body("db-a")
    other["labels"] = {"pm-pool": "db"}
    wait_done(compute, compute.instances().insert(project=PROJECT, zone=ZONE_A, body=other).execute())

    web = compute.instances().list(project=PROJECT, zone=ZONE_A, filter='labels.pm-pool = "web"').execute()
    assert web["kind"] == "compute#instanceList"
    assert sorted(i["name"] for i in web["items"]) == ["web-a", "web-b"]
    by_regex = compute.instances().list(project=PROJECT, zone=ZONE_A, filter="name eq 'db-.*'").execute()
    assert [i["name"] for i in by_regex["items"]] == ["db-a"]
    nothing = compute.instances().list(project=PROJECT, zone=ZONE_A, filter='labels.pm-pool = "none"').execute()
    assert "items" not in nothing

    names = []
    request = compute.instances().list(project=PROJECT, zone=ZONE_A, maxResults=1)
    pages = 0
    while request is not None:
        response = request.execute()
        pages += 1
        assert len(response.get("items", [])) <= 1
        names.extend(i["name"] for i in response.get("items", []))
        request = compute.instances().list_next(previous_request=request, previous_response=response)
    assert names == ["db-a", "web-a", "web-b"]
    assert pages == 3


def test_aggregated_list(sim):
    compute, _ = sim
    wait_done(compute, insert(compute, "web-agg"))
    result = compute.instances().aggregatedList(project=PROJECT).execute()
    assert result["kind"] == "compute#instanceAggregatedList"
    items = result["items"]
    assert [i["name"] for i in items[f"zones/{ZONE_A}"]["instances"]] == ["web-agg"]
    assert items[f"zones/{ZONE_B}"]["warning"]["code"] == "NO_RESULTS_ON_PAGE"


def test_delete_then_404(sim):
    compute, _ = sim
    wait_done(compute, insert(compute, "web-del"))
    op = compute.instances().delete(project=PROJECT, zone=ZONE_A, instance="web-del").execute()
    assert op["operationType"] == "delete"
    wait_done(compute, op)

    def gone():
        try:
            compute.instances().get(project=PROJECT, zone=ZONE_A, instance="web-del").execute()
            return False
        except HttpError as error:
            assert error.resp.status == 404
            return True

    eventually(gone, "web-del deleted")
    with pytest.raises(HttpError) as raised:
        compute.instances().get(project=PROJECT, zone=ZONE_A, instance="never-was").execute()
    assert raised.value.resp.status == 404
    assert raised.value.error_details[0]["reason"] == "notFound"


def test_duplicate_name_is_409(sim):
    compute, _ = sim
    wait_done(compute, insert(compute, "web-dup"))
    with pytest.raises(HttpError) as raised:
        insert(compute, "web-dup")
    assert raised.value.resp.status == 409
    assert raised.value.error_details[0]["reason"] == "alreadyExists"


def test_invalid_body_is_400(sim):
    compute, _ = sim
    body = instance_body("Not_Valid")
    with pytest.raises(HttpError) as raised:
        compute.instances().insert(project=PROJECT, zone=ZONE_A, body=body).execute()
    assert raised.value.resp.status == 400
    assert "resource.name" in raised.value.error_details[0]["message"]


def test_stockout_surfaces_as_the_operation_error(sim):
    compute, root = sim
    control(root, f"zones/{ZONE_B}", {"capacity": 1})
    wait_done(compute, insert(compute, "web-fits", zone=ZONE_B), zone=ZONE_B)
    op = wait_done(compute, insert(compute, "web-no-room", zone=ZONE_B), zone=ZONE_B)
    errors = op["error"]["errors"]
    assert errors[0]["code"] == "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"
    assert f"'projects/{PROJECT}/zones/{ZONE_B}'" in errors[0]["message"]
    info = [d["errorInfo"] for d in errors[0]["errorDetails"] if "errorInfo" in d][0]
    assert info["reason"] == "resource_availability"
    assert info["domain"] == "compute.googleapis.com"
    assert info["metadatas"]["zone"] == ZONE_B
    assert ZONE_A in info["metadatas"]["zonesAvailable"].split(",")
    assert op["httpErrorStatusCode"] == 503
    assert op["httpErrorMessage"] == "SERVICE UNAVAILABLE"
    with pytest.raises(HttpError) as raised:
        compute.instances().get(project=PROJECT, zone=ZONE_B, instance="web-no-room").execute()
    assert raised.value.resp.status == 404
    state = control(root, "state")
    assert state["zones"][ZONE_B]["capacity"] == 1
    assert state["counters"]["stockouts"] == 1


def test_preempted_instance_and_its_operation(sim):
    compute, root = sim
    wait_done(compute, insert(compute, "web-stop", instanceTerminationAction="STOP"))
    wait_done(compute, insert(compute, "web-gone", provisioningModel="SPOT", instanceTerminationAction="DELETE"))
    reply = control(root, "preempt", {"names": ["web-stop", "web-gone"]})
    assert sorted(reply["preempted"]) == ["web-gone", "web-stop"]

    def terminated():
        instance = compute.instances().get(project=PROJECT, zone=ZONE_A, instance="web-stop").execute()
        return instance if instance["status"] == "TERMINATED" else None

    instance = eventually(terminated, "web-stop TERMINATED")
    assert instance["lastStopTimestamp"]

    def deleted():
        try:
            compute.instances().get(project=PROJECT, zone=ZONE_A, instance="web-gone").execute()
            return False
        except HttpError as error:
            return error.resp.status == 404

    eventually(deleted, "web-gone deleted")

    ops = compute.zoneOperations().list(
        project=PROJECT, zone=ZONE_A, filter=f'operationType = "{PREEMPTED}"'
    ).execute()["items"]
    assert sorted(op["targetLink"].rsplit("/", 1)[1] for op in ops) == ["web-gone", "web-stop"]
    for op in ops:
        assert op["operationType"] == PREEMPTED
        assert op["status"] == "DONE"
        fetched = compute.zoneOperations().get(project=PROJECT, zone=ZONE_A, operation=op["name"]).execute()
        assert fetched["name"] == op["name"]

    started = compute.instances().start(project=PROJECT, zone=ZONE_A, instance="web-stop").execute()
    assert "error" not in wait_done(compute, started)
    eventually(
        lambda: compute.instances().get(project=PROJECT, zone=ZONE_A, instance="web-stop").execute()["status"] == "RUNNING",
        "web-stop running again",
    )


def test_zones_list(sim):
    compute, _ = sim
    zones = compute.zones().list(project=PROJECT).execute()
    assert [z["name"] for z in zones["items"]] == [ZONE_A, ZONE_B]
    assert all(z["status"] == "UP" for z in zones["items"])


def test_project_metadata_is_read_and_written_with_its_fingerprint(sim):
    compute, _ = sim
    project = compute.projects().get(project=PROJECT).execute()
    assert project["kind"] == "compute#project"
    assert project["name"] == PROJECT
    metadata = project["commonInstanceMetadata"]
    assert metadata["kind"] == "compute#metadata" and metadata["fingerprint"]
    body = {
        "fingerprint": metadata["fingerprint"],
        "items": [{"key": "prevmtable", "value": "{targetVMCount: 1}"}, {"key": "on-create", "value": "#!/bin/sh\n"}],
    }
    op = compute.projects().setCommonInstanceMetadata(project=PROJECT, body=body).execute()
    assert op["kind"] == "compute#operation"
    assert "zone" not in op
    assert op["selfLink"].endswith(f"/projects/{PROJECT}/global/operations/{op['name']}")
    done = compute.globalOperations().wait(project=PROJECT, operation=op["name"]).execute()
    assert done["status"] == "DONE" and "error" not in done
    got = compute.projects().get(project=PROJECT).execute()["commonInstanceMetadata"]
    assert [i["key"] for i in got["items"]] == ["prevmtable", "on-create"]
    assert got["fingerprint"] != metadata["fingerprint"]
    with pytest.raises(HttpError) as stale:
        compute.projects().setCommonInstanceMetadata(project=PROJECT, body=body).execute()
    assert stale.value.resp.status == 412
