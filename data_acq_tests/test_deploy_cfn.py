"""The AWS deployment template, deploy/cfn.yaml: cfn-lint finds nothing, the resources the
deployment needs are declared, the bucket is locked down and no secret is written into it.

Nothing is deployed; the template is read as CloudFormation reads it (short-form intrinsics
such as !Ref and !Sub included) by cfn-lint's own loader.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# cfn-lint, a dev dependency: its loader reads the short-form intrinsics (!Ref, !Sub ...)
import cfnlint.decode as cfnlint_decode
import pytest

TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "cfn.yaml"

# keys whose value, if a plain string, would be a secret written into the template
SECRET_KEY = re.compile(r"(password|passwd|secret|secretstring|token|apikey|accesskey)$", re.I)
# names of container environment variables that must come from `Secrets:`, never `Environment:`
SECRET_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.I)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, matches = cfnlint_decode.decode_str(TEMPLATE.read_text())
    assert not matches, [str(match) for match in matches]
    assert isinstance(decoded, dict)
    return decoded


def _resources(template: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(template["Resources"])


def _of_type(template: Mapping[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in _resources(template).items() if r["Type"] == type_}


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) of every mapping entry in the template, depth first."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            here = f"{path}/{key}"
            yield here, str(key), value
            yield from _walk(value, here)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _walk(item, f"{path}[{index}]")


def _entries(items: list[Any]) -> Iterator[Mapping[str, Any]]:
    """The entries of a list such as `Environment:`, either branch of an `!If` included."""
    for item in items:
        if isinstance(item, Mapping) and set(item) == {"Fn::If"}:
            yield from _entries([b for b in item["Fn::If"][1:] if b != {"Ref": "AWS::NoValue"}])
        elif isinstance(item, Mapping):
            yield item


def _is_dynamic_reference(value: Any) -> bool:
    """A `{{resolve:secretsmanager:...}}` reference, plain or inside !Sub."""
    if isinstance(value, Mapping) and set(value) == {"Fn::Sub"}:
        value = value["Fn::Sub"]
        value = value[0] if isinstance(value, list) else value
    return isinstance(value, str) and value.startswith("{{resolve:secretsmanager:")


def _is_literal(value: Any) -> bool:
    """Whether the value is written into the template rather than referenced from elsewhere."""
    if isinstance(value, str | int | float):
        return not _is_dynamic_reference(value)
    if isinstance(value, Mapping) and len(value) == 1:
        ((function, argument),) = value.items()
        if function == "Fn::Sub":
            return not _is_dynamic_reference(value)
        if function == "Fn::If":
            return any(_is_literal(branch) for branch in argument[1:])
        return function == "Fn::Join"  # a string built from pieces
    return False  # a Ref, GetAtt, ImportValue, or a structure (a resource, GenerateSecretString)


def test_cfn_lint_finds_nothing() -> None:
    # the console script beside this interpreter, else its entry point (cfnlint has no __main__)
    script = Path(sys.executable).with_name("cfn-lint")
    entry_point = "import sys; from cfnlint.runner import main; sys.exit(main())"
    command = [str(script)] if script.exists() else [sys.executable, "-c", entry_point]
    result = subprocess.run(
        [*command, "--", str(TEMPLATE)], capture_output=True, text=True, check=False, timeout=300
    )
    output = result.stdout + result.stderr
    print(output)
    assert result.returncode == 0, output
    assert output.strip() == "", output


def test_declares_the_deployment(template: dict[str, Any]) -> None:
    types = {resource["Type"] for resource in _resources(template).values()}
    for type_ in (
        "AWS::S3::Bucket",
        "AWS::S3::BucketPolicy",
        "AWS::RDS::DBInstance",
        "AWS::RDS::DBSubnetGroup",
        "AWS::SecretsManager::Secret",
        "AWS::ECS::Cluster",
        "AWS::ECS::TaskDefinition",
        "AWS::ECS::Service",
        "AWS::ServiceDiscovery::PrivateDnsNamespace",
        "AWS::ServiceDiscovery::Service",
        "AWS::ElasticLoadBalancingV2::LoadBalancer",
        "AWS::ElasticLoadBalancingV2::Listener",
        "AWS::IAM::Role",
        "AWS::Logs::LogGroup",
        "AWS::Logs::MetricFilter",
        "AWS::CloudWatch::Alarm",
    ):
        assert type_ in types, f"no {type_} in the template"

    services = _of_type(template, "AWS::ECS::Service")
    assert {"WebserverService", "DaemonService", "CodeServerService"} <= set(services)
    assert len(_of_type(template, "AWS::SecretsManager::Secret")) >= 2  # MQTT and database
    assert {"WebserverLogGroup", "DaemonLogGroup", "CodeServerLogGroup", "RunLogGroup"} <= set(
        _of_type(template, "AWS::Logs::LogGroup")
    )
    assert len(_of_type(template, "AWS::CloudWatch::Alarm")) >= 2

    # the webserver behind the load balancer; the code server in Cloud Map
    web = services["WebserverService"]["Properties"]
    assert web["LoadBalancers"][0]["ContainerPort"] == 3000
    assert "ServiceRegistries" in services["CodeServerService"]["Properties"]
    discovery = _of_type(template, "AWS::ServiceDiscovery::Service")
    assert [d["Properties"]["Name"] for d in discovery.values()] == ["code"]


def test_task_definitions(template: dict[str, Any]) -> None:
    definitions = _of_type(template, "AWS::ECS::TaskDefinition")
    by_family = {d["Properties"]["Family"]: d["Properties"] for d in definitions.values()}
    assert set(by_family) >= {"data-acq-run"}
    run = by_family["data-acq-run"]
    assert run["ContainerDefinitions"][0]["Name"] == "run"  # deploy/dagster.yaml container_name
    for props in by_family.values():
        assert props["RequiresCompatibilities"] == ["FARGATE"]
        assert int(run["Cpu"]) >= int(props["Cpu"]) and int(run["Memory"]) >= int(props["Memory"])
        (container,) = props["ContainerDefinitions"]
        env = {e["Name"] for e in _entries(container["Environment"])}
        secrets = {s["Name"] for s in container["Secrets"]}
        assert {"DAGSTER_HOME", "DAGSTER_PG_HOST", "DATA_ACQ_STORAGE", "AWS_REGION"} <= env
        assert "DAGSTER_PG_PASSWORD" in secrets
        assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    assert {"MQTT_USERNAME", "MQTT_PASSWORD"} <= {
        s["Name"] for s in run["ContainerDefinitions"][0]["Secrets"]
    }
    commands = {tuple(d["ContainerDefinitions"][0].get("Command", ())) for d in by_family.values()}
    assert {("webserver",), ("daemon",), ("code-server",)} <= commands


def test_bucket_is_versioned_encrypted_private_and_tiered(template: dict[str, Any]) -> None:
    (bucket,) = _of_type(template, "AWS::S3::Bucket").values()
    props = bucket["Properties"]
    assert props["VersioningConfiguration"]["Status"] == "Enabled"
    (sse,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    block = props["PublicAccessBlockConfiguration"]
    assert all(
        block[key] is True
        for key in (
            "BlockPublicAcls",
            "BlockPublicPolicy",
            "IgnorePublicAcls",
            "RestrictPublicBuckets",
        )
    )
    rules = props["LifecycleConfiguration"]["Rules"]
    raw = [r for r in rules if str(r.get("Prefix", "")).endswith("raw/")]
    assert raw, "no lifecycle rule for raw/"
    classes = {t["StorageClass"]: t["TransitionInDays"] for t in raw[0]["Transitions"]}
    assert classes == {"STANDARD_IA": 30, "GLACIER_IR": 180}
    assert any("NoncurrentVersionExpiration" in r for r in rules)

    (policy,) = _of_type(template, "AWS::S3::BucketPolicy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    assert any(
        s["Effect"] == "Deny" and s["Condition"]["Bool"]["aws:SecureTransport"] == "false"
        for s in statements
    )


def test_database_is_private_encrypted_and_kept(template: dict[str, Any]) -> None:
    (database,) = _of_type(template, "AWS::RDS::DBInstance").values()
    props = database["Properties"]
    assert props["StorageEncrypted"] is True and props["PubliclyAccessible"] is False
    assert database["DeletionPolicy"] == "Snapshot"
    assert database["UpdateReplacePolicy"] == "Snapshot"
    assert props.get("ManageMasterUserPassword") is True or _is_dynamic_reference(
        props["MasterUserPassword"]
    )


def test_web_ui_is_reachable_from_the_allowed_range_only(template: dict[str, Any]) -> None:
    groups = _of_type(template, "AWS::EC2::SecurityGroup")
    alb = groups["LoadBalancerSecurityGroup"]["Properties"]
    ingress = [rule for rule in alb["SecurityGroupIngress"] if isinstance(rule, Mapping)]
    for rule in ingress:
        if "Fn::If" in rule:  # the HTTPS rule, when a certificate is given
            rule = rule["Fn::If"][1]
        assert rule["CidrIp"] == {"Ref": "AllowedCidr"}
    database = groups["DatabaseSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert [r["FromPort"] for r in database] == [5432]
    assert database[0]["SourceSecurityGroupId"] == {"Fn::GetAtt": ["TaskSecurityGroup", "GroupId"]}


def test_no_literal_secret_in_the_template(template: dict[str, Any]) -> None:
    found = []
    for path, key, value in _walk(template):
        if SECRET_KEY.search(key) and _is_literal(value):
            found.append(f"{path} = {value!r}")
        if key == "SecretStringTemplate":  # the generated secrets' fixed part: no password
            fixed = json.loads(value)
            found += [f"{path} holds {k}" for k in fixed if SECRET_KEY.search(k)]
        if key == "Environment" and isinstance(value, list):  # secrets go through `Secrets:`
            names = [e.get("Name", "") for e in _entries(value)]
            found += [f"{path} sets {n}" for n in names if SECRET_ENV.search(str(n))]
    assert not found, found

    text = TEMPLATE.read_text()
    assert "aws_secret_access_key" not in text.lower()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # an access key id


def test_secrets_reach_the_containers_by_reference(template: dict[str, Any]) -> None:
    for definition in _of_type(template, "AWS::ECS::TaskDefinition").values():
        for container in definition["Properties"]["ContainerDefinitions"]:
            for secret in container["Secrets"]:
                value_from = secret["ValueFrom"]
                assert isinstance(value_from, Mapping) and "Fn::Sub" in value_from
                assert re.fullmatch(r"\$\{\w+\}:(username|password)::", value_from["Fn::Sub"])


def test_launcher_role_may_pass_only_the_run_task_roles(template: dict[str, Any]) -> None:
    statements = [
        statement
        for policy in _resources(template)["LauncherRole"]["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
    ]
    (pass_role,) = [s for s in statements if s["Action"] == "iam:PassRole"]
    assert pass_role["Resource"] == [
        {"Fn::GetAtt": ["ExecutionRole", "Arn"]},
        {"Fn::GetAtt": ["TaskRole", "Arn"]},
    ]
    (run_task,) = [s for s in statements if s["Action"] == "ecs:RunTask"]
    assert "task-definition/data-acq-run:*" in run_task["Resource"]["Fn::Sub"]
