"""The AWS side of the ECS end-to-end test (tests/ecs_cluster.rs).

Runs moto's server in this process (ThreadedMotoServer) on a free loopback
port, so that its ECS model can be adjusted first: moto gives every awsvpc
task a random private IPv4, and the local test nodes need chosen loopback
addresses instead (127.0.0.2, .3, .4, then .5 ...), so its IP generator is
replaced. Tasks are pinned to RUNNING (moto otherwise moves a task one status
towards STOPPED on every DescribeTasks).

Seeds a cluster, a VPC and subnet, a Fargate task definition, a service
(desiredCount = the number of tasks) and that many RUNNING tasks (group
"service:NAME", as ECS sets it for a service's tasks), then prints one JSON
line: {"endpoint", "cluster", "cluster_arn", "family", "service", "tasks":
[{"arn", "ip"}]}.

Then reads commands from stdin, one per line, answering each with one JSON
line:
  run          start one more task           -> {"arn", "ip"}
  stop ARN     stop a task (desired STOPPED) -> {"stopped": ARN}
Exits when stdin closes (the test process ended, however it ended).

Needs moto[server] and boto3: scripts/setup-moto installs them.
"""

import itertools
import json
import logging
import sys

import boto3
import moto.ecs.models as ecs_models
from moto.moto_api import state_manager
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
CLUSTER = "tessera-e2e"
FAMILY = "tessera"
SERVICE = "tessera"


def main() -> None:
    first_tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    # werkzeug logs every request on stderr; the test only wants failures.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    addresses = (f"127.0.0.{n}" for n in itertools.count(2))
    ecs_models.random_private_ip = lambda *args, **kwargs: next(addresses)
    state_manager.set_transition(
        model_name="ecs::task",
        transition={"progression": "manual", "times": 1_000_000_000},
    )

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    session = boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION
    )
    ec2 = session.client("ec2", endpoint_url=endpoint)
    ecs = session.client("ecs", endpoint_url=endpoint)

    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(
        GroupName="tessera", Description="tessera e2e", VpcId=vpc
    )["GroupId"]
    cluster_arn = ecs.create_cluster(clusterName=CLUSTER)["cluster"]["clusterArn"]
    ecs.register_task_definition(
        family=FAMILY,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[
            {"name": "tessera", "image": "tessera:test", "memory": 512, "essential": True}
        ],
    )
    ecs.create_service(
        cluster=CLUSTER,
        serviceName=SERVICE,
        taskDefinition=FAMILY,
        desiredCount=first_tasks,
        launchType="FARGATE",
        networkConfiguration={
            "awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group]}
        },
    )

    def run_task() -> dict:
        task = ecs.run_task(
            cluster=CLUSTER,
            taskDefinition=FAMILY,
            launchType="FARGATE",
            group=f"service:{SERVICE}",
            count=1,
            networkConfiguration={
                "awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group]}
            },
        )["tasks"][0]
        ip = next(
            detail["value"]
            for attachment in task["attachments"]
            for detail in attachment["details"]
            if detail["name"] == "privateIPv4Address"
        )
        return {"arn": task["taskArn"], "ip": ip}

    tasks = [run_task() for _ in range(first_tasks)]
    reply(
        {
            "endpoint": endpoint,
            "cluster": CLUSTER,
            "cluster_arn": cluster_arn,
            "family": FAMILY,
            "service": SERVICE,
            "tasks": tasks,
        }
    )
    for line in sys.stdin:
        words = line.split()
        try:
            if words == ["run"]:
                reply(run_task())
            elif len(words) == 2 and words[0] == "stop":
                ecs.stop_task(cluster=CLUSTER, task=words[1], reason="e2e test")
                reply({"stopped": words[1]})
            elif words:
                reply({"error": f"unknown command {line.strip()!r}"})
        except Exception as err:  # the test reads the reason instead of hanging
            reply({"error": str(err)})
    server.stop()


def reply(message: dict) -> None:
    print(json.dumps(message), flush=True)


if __name__ == "__main__":
    main()
