"""The AWS deployment template, deploy/cfn.yaml: cfn-lint finds nothing, the resources the
deployment needs are declared, the bucket is locked down, no secret is written into it, the web
UI is internal or behind HTTPS and a login, the containers get the broker CA's pin and the
processing settings, every alarm notifies someone, the database is sized for its retention, the
Glue tables project the folders and columns the pipeline writes, and the run tasks may write
(and delete) exactly what processing writes (and deletes).

Nothing is deployed; the template is read as CloudFormation reads it (short-form intrinsics
such as !Ref and !Sub included) by cfn-lint's own loader. For the access modes it is rendered
here for given parameter values: conditions evaluated, `!If` branches chosen, resources of false
conditions dropped, and the Rules' assertions evaluated (Fn::Equals, Fn::Not, Fn::And, Fn::Or,
Fn::EachMemberEquals) -- a model of what CloudFormation does with them, not CloudFormation.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

# cfn-lint, a dev dependency: its loader reads the short-form intrinsics (!Ref, !Sub ...)
import cfnlint.decode as cfnlint_decode
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from data_acq import layout
from data_acq.acquire.raw import encode_object, raw_key
from data_acq.curate.compaction import upkeep
from data_acq.curate.tables import CuratedTables, table_schema
from data_acq.defs.jobs import PROCESSING_TASK, SMALL_TASK
from data_acq.devtools.simulate import SimulationSpec, simulate
from data_acq.messages import encode_record
from data_acq.pipeline import process
from data_acq.settings import Settings, SettingsError
from data_acq.storage import LocalStore

TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "cfn.yaml"
RENDERER = TEMPLATE.with_name("render_instance.py")  # sizes the run queue at container start

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


def _family(definition: Mapping[str, Any]) -> str:
    """A task definition's family as the stack `data-acq` names it: every family is named for
    its stack (${AWS::StackName}-run), so that two stacks can share an account."""
    family = definition["Properties"]["Family"]["Fn::Sub"]
    assert family.startswith("${AWS::StackName}-"), family
    return family.replace("${AWS::StackName}", "data-acq")


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
    if isinstance(value, bool):
        return False  # a switch (GenerateSecret: true), not a value
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
    by_family = {_family(d): d["Properties"] for d in definitions.values()}
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
    drain = by_family["data-acq-drain"]
    assert drain["ContainerDefinitions"][0]["Name"] == "run"  # the launcher overrides "run"
    assert {"MQTT_USERNAME", "MQTT_PASSWORD"} <= {
        s["Name"] for s in drain["ContainerDefinitions"][0]["Secrets"]
    }
    for family, props in by_family.items():  # the drains' task alone gets the credentials
        names = {s["Name"] for s in props["ContainerDefinitions"][0]["Secrets"]}
        assert ("MQTT_PASSWORD" in names) == (family == "data-acq-drain"), family
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
    assert props["DeletionProtection"] is True
    assert props["MultiAZ"] == {"Ref": "DatabaseMultiAZ"}
    window = template["Parameters"]["DatabaseMaintenanceWindow"]
    assert props["PreferredMaintenanceWindow"] == {"Ref": "DatabaseMaintenanceWindow"}
    assert re.fullmatch(window["AllowedPattern"], window["Default"])
    assert not re.fullmatch(window["AllowedPattern"], "sunday 3am")
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
        {"Fn::GetAtt": ["DrainExecutionRole", "Arn"]},
        {"Fn::GetAtt": ["TaskRole", "Arn"]},
        {"Fn::GetAtt": ["DrainRole", "Arn"]},
    ]
    (run_task,) = [s for s in statements if s["Action"] == "ecs:RunTask"]
    resources = [r["Fn::Sub"] for r in run_task["Resource"]]
    assert [r.rpartition("/")[2] for r in resources] == [
        "${AWS::StackName}-run:*",
        "${AWS::StackName}-drain:*",
    ]


# --- the web UI's access modes, the broker CA's pin, the alarms ---------------------------------

NO_VALUE = {"Ref": "AWS::NoValue"}
# values for the parameters without a default
REQUIRED = {
    "VpcId": "vpc-0123456789abcdef0",
    "PrivateSubnetIds": "subnet-0123456789abcdef0,subnet-0123456789abcdef1",
    "AllowedCidr": "10.8.0.0/16",
    "ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/data-acq:1",
    "MqttBroker": "mqtt.example.org",
    "MqttClientId": "data-acq-test",
    "AlarmEmail": "ops@example.org",
}
PUBLIC = {
    "WebUiAccess": "public-with-login",
    "CertificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-aaaa-bbbb-cccc",
    "WebUiDomainName": "dagster.example.org",
    "PublicSubnetIds": "subnet-0123456789abcdef2,subnet-0123456789abcdef3",
}
PIN = ":".join(["AB"] * 32)  # the way `openssl x509 -noout -fingerprint -sha256` prints one


def _parameters(template: Mapping[str, Any], overrides: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, spec in template["Parameters"].items():
        value = {**REQUIRED, **overrides}.get(name, spec.get("Default"))
        assert value is not None, f"no value for {name}"
        is_list = spec["Type"] == "CommaDelimitedList" or spec["Type"].startswith("List<")
        values[name] = str(value).split(",") if is_list else str(value)
    return values


def _evaluate(node: Any, parameters: Mapping[str, Any], condition: Any) -> Any:
    """A condition, a rule assertion or a value, with the functions this template uses."""
    if isinstance(node, Mapping) and len(node) == 1:
        ((function, argument),) = node.items()
        if function == "Ref":
            return parameters[argument]
        if function == "Condition":
            return condition(argument)
        if function == "Fn::Sub":  # ${Name}: a parameter, a pseudo parameter or a given value
            text, variables = (argument, {}) if isinstance(argument, str) else argument
            names = {**parameters, **_evaluate(variables, parameters, condition)}
            return re.sub(r"\$\{([^}]+)\}", lambda m: str(names[m.group(1)]), text)
        values = [_evaluate(item, parameters, condition) for item in argument]
        if function == "Fn::Join":
            return values[0].join(values[1])
        if function == "Fn::Split":
            return values[1].split(values[0])
        if function == "Fn::Select":
            return values[1][int(values[0])]
        if function == "Fn::Equals":
            return str(values[0]) == str(values[1])
        if function == "Fn::Not":
            return not values[0]
        if function == "Fn::And":
            return all(values)
        if function == "Fn::Or":
            return any(values)
        if function == "Fn::EachMemberEquals":
            return all(str(member) == str(values[1]) for member in values[0])
        raise AssertionError(f"not modelled here: {function}")
    if isinstance(node, Mapping):
        return {key: _evaluate(value, parameters, condition) for key, value in node.items()}
    if isinstance(node, list):
        return [_evaluate(item, parameters, condition) for item in node]
    return node


def _conditions(template: Mapping[str, Any], parameters: Mapping[str, Any]) -> dict[str, bool]:
    specs, done = template["Conditions"], {}

    def condition(name: str) -> bool:
        if name not in done:
            done[name] = bool(_evaluate(specs[name], parameters, condition))
        return done[name]

    return {name: condition(name) for name in specs}


def _resolve(node: Any, conditions: Mapping[str, bool]) -> Any:
    """`node` with each `!If` replaced by its chosen branch and AWS::NoValue removed."""
    if isinstance(node, Mapping):
        if set(node) == {"Fn::If"}:
            name, true, false = node["Fn::If"]
            return _resolve(true if conditions[name] else false, conditions)
        resolved = {key: _resolve(value, conditions) for key, value in node.items()}
        return {key: value for key, value in resolved.items() if value != NO_VALUE}
    if isinstance(node, list):
        return [i for i in (_resolve(item, conditions) for item in node) if i != NO_VALUE]
    return node


def _render(template: Mapping[str, Any], **overrides: str) -> dict[str, Any]:
    """Resources and outputs as CloudFormation would create them for these parameter values."""
    conditions = _conditions(template, _parameters(template, overrides))

    def kept(section: str) -> dict[str, Any]:
        return {
            name: _resolve(item, conditions)
            for name, item in template[section].items()
            if conditions.get(item.get("Condition", ""), True)
        }

    return {"Resources": kept("Resources"), "Outputs": kept("Outputs")}


def _refusals(template: Mapping[str, Any], **overrides: str) -> list[str]:
    """The AssertDescription of every Rules assertion that these parameter values fail."""
    parameters = _parameters(template, overrides)
    conditions = _conditions(template, parameters)
    refused = []
    for rule in template["Rules"].values():
        if "RuleCondition" in rule and not _evaluate(
            rule["RuleCondition"], parameters, conditions.__getitem__
        ):
            continue
        for assertion in rule["Assertions"]:
            if not _evaluate(assertion["Assert"], parameters, conditions.__getitem__):
                refused.append(assertion["AssertDescription"])
    return refused


def _listeners(rendered: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: resource["Properties"]
        for name, resource in _of_type(rendered, "AWS::ElasticLoadBalancingV2::Listener").items()
    }


def _actions(listener: Mapping[str, Any]) -> list[dict[str, Any]]:
    return sorted(listener["DefaultActions"], key=lambda action: action.get("Order", 50000))


def test_template_parses_with_its_sections(template: dict[str, Any]) -> None:
    assert {"Parameters", "Rules", "Conditions", "Resources", "Outputs"} <= set(template)
    assert _render(template)["Resources"]  # every condition and !If resolves


def test_web_ui_is_behind_an_internal_load_balancer_by_default(template: dict[str, Any]) -> None:
    access = template["Parameters"]["WebUiAccess"]
    assert access["Default"] == "internal"
    assert access["AllowedValues"] == ["internal", "public-with-login"]

    rendered = _render(template)
    balancer = rendered["Resources"]["LoadBalancer"]["Properties"]
    assert balancer["Scheme"] == "internal"
    assert balancer["Subnets"] == {"Ref": "PrivateSubnetIds"}
    (listener,) = _listeners(rendered).values()
    assert (listener["Protocol"], listener["Port"]) == ("HTTP", 80)
    assert [a["Type"] for a in _actions(listener)] == ["forward"]
    assert not _of_type(rendered, "AWS::Cognito::UserPool")
    assert "WebUiUserPoolId" not in rendered["Outputs"]

    # internal with a certificate: HTTPS and the redirect, still internal and without a login
    rendered = _render(template, CertificateArn=PUBLIC["CertificateArn"])
    assert rendered["Resources"]["LoadBalancer"]["Properties"]["Scheme"] == "internal"
    listeners = {(p["Protocol"], p["Port"]): _actions(p) for p in _listeners(rendered).values()}
    assert [a["Type"] for a in listeners["HTTPS", 443]] == ["forward"]
    assert [a["Type"] for a in listeners["HTTP", 80]] == ["redirect"]


def test_public_web_ui_is_https_only_and_signs_in_before_forwarding(
    template: dict[str, Any],
) -> None:
    rendered = _render(template, **PUBLIC)
    resources = rendered["Resources"]
    balancer = resources["LoadBalancer"]["Properties"]
    assert balancer["Scheme"] == "internet-facing"
    assert balancer["Subnets"] == {"Ref": "PublicSubnetIds"}

    listeners = {(p["Protocol"], p["Port"]): p for p in _listeners(rendered).values()}
    assert set(listeners) == {("HTTPS", 443), ("HTTP", 80)}
    https = listeners["HTTPS", 443]
    assert https["Certificates"] == [{"CertificateArn": {"Ref": "CertificateArn"}}]
    assert https["SslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    login, forward = _actions(https)
    assert login["Type"] == "authenticate-cognito" and forward["Type"] == "forward"
    assert login["Order"] < forward["Order"]
    cognito = login["AuthenticateCognitoConfig"]
    assert cognito["UserPoolArn"] == {"Fn::GetAtt": ["WebUiUserPool", "Arn"]}
    assert cognito["UserPoolClientId"] == {"Ref": "WebUiUserPoolClient"}
    assert cognito["OnUnauthenticatedRequest"] == "authenticate"
    assert cognito["UserPoolDomain"] == resources["WebUiUserPoolDomain"]["Properties"]["Domain"]
    assert forward["TargetGroupArn"] == {"Ref": "WebserverTargetGroup"}
    (redirect,) = _actions(listeners["HTTP", 80])
    assert redirect["Type"] == "redirect"
    assert (redirect["RedirectConfig"]["Protocol"], redirect["RedirectConfig"]["Port"]) == (
        "HTTPS",
        "443",
    )

    # operators are added by an administrator and sign in with a password and a TOTP code
    pool = resources["WebUiUserPool"]["Properties"]
    assert pool["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is True
    assert pool["MfaConfiguration"] == "ON"
    client = resources["WebUiUserPoolClient"]["Properties"]
    assert client["GenerateSecret"] is True and client["AllowedOAuthFlows"] == ["code"]
    assert client["CallbackURLs"] == [{"Fn::Sub": "https://${WebUiDomainName}/oauth2/idpresponse"}]
    assert not [path for path, key, _ in _walk(template) if key == "ClientSecret"]
    # the load balancer reaches the user pool's token endpoint
    egress = resources["LoadBalancerSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    assert any(rule["FromPort"] == 443 and rule["CidrIp"] == "0.0.0.0/0" for rule in egress)
    assert rendered["Outputs"]["WebUiUrl"]["Value"] == {"Fn::Sub": "https://${WebUiDomainName}"}
    assert "WebUiUserPoolId" in rendered["Outputs"]


def test_rules_refuse_an_open_web_ui(template: dict[str, Any]) -> None:
    assert _refusals(template) == []
    assert _refusals(template, **PUBLIC) == []
    assert _refusals(template, **PUBLIC, AllowedCidr="0.0.0.0/0") == []  # the login is the gate
    for missing, named in (
        ("CertificateArn", "CertificateArn"),
        ("WebUiDomainName", "WebUiDomainName"),
        ("PublicSubnetIds", "PublicSubnetIds"),
    ):
        (refusal,) = _refusals(template, **{**PUBLIC, missing: ""})
        assert named in refusal
    (refusal,) = _refusals(template, AllowedCidr="0.0.0.0/0")  # internal: no login at all
    assert "0.0.0.0/0" in refusal

    pattern = template["Parameters"]["AllowedCidr"]["AllowedPattern"]
    for accepted in ("10.8.0.0/16", "203.0.113.7/32", "0.0.0.0/0"):
        assert re.fullmatch(pattern, accepted), accepted
    for refused in ("10.8.0.0", "10.8.0.0/33", "203.0.113.7/0", "10.8.0.0/16,0.0.0.0/0"):
        assert not re.fullmatch(pattern, refused), refused
    for too_wide in ("0.0.0.0/1", "128.0.0.0/1", "10.0.0.0/7"):  # most of the internet
        assert not re.fullmatch(pattern, too_wide), too_wide
    assert re.fullmatch(pattern, "10.0.0.0/8")


def test_no_default_broker_and_a_downloaded_ca_must_be_pinned(template: dict[str, Any]) -> None:
    parameters = template["Parameters"]
    assert "Default" not in parameters["MqttBroker"]  # no staging broker by default
    assert parameters["CaCertUrl"]["Default"] == ""
    url = "https://ca.example.org/ca.crt"
    (refusal,) = _refusals(template, CaCertUrl=url)
    assert "CaCertSha256" in refusal
    assert _refusals(template, CaCertUrl=url, CaCertSha256=PIN) == []
    assert _refusals(template) == []  # no URL: the system CAs, nothing to pin
    for accepted in ("", url):
        assert re.fullmatch(parameters["CaCertUrl"]["AllowedPattern"], accepted)
    assert not re.fullmatch(parameters["CaCertUrl"]["AllowedPattern"], "http://ca.example.org")


def test_ca_cert_pin_reaches_the_broker_containers(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["CaCertSha256"]
    assert parameter["Default"] == ""
    for accepted in ("", PIN, PIN.replace(":", ""), PIN.lower()):
        assert re.fullmatch(parameter["AllowedPattern"], accepted), accepted
    for refused in (f"sha256 Fingerprint={PIN}", PIN[:-3], "not-a-fingerprint"):
        assert not re.fullmatch(parameter["AllowedPattern"], refused), refused

    pinned = _environments(
        _render(template, CaCertUrl="https://ca.example.org/ca.crt", CaCertSha256=PIN)
    )
    assert {"data-acq-code-server", "data-acq-run"} <= set(pinned)
    for family, env in pinned.items():
        if "CA_CERT_URL" in env:  # wherever the CA is fetched, it is checked
            assert env["CA_CERT_SHA256"] == {"Ref": "CaCertSha256"}, family
    assert "CA_CERT_SHA256" in pinned["data-acq-code-server"]
    assert "CA_CERT_SHA256" in pinned["data-acq-run"]
    # not pinned: no variable at all rather than an empty one
    assert not [f for f, env in _environments(_render(template)).items() if "CA_CERT_SHA256" in env]


def _alarms(template: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: r["Properties"] for name, r in _of_type(template, "AWS::CloudWatch::Alarm").items()
    }


def _metric_stats(alarm: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A metric math alarm's metrics by id: {id: MetricStat}."""
    return {m["Id"]: m["MetricStat"] for m in alarm["Metrics"] if "MetricStat" in m}


def _filters_of(template: Mapping[str, Any], metric: str) -> list[dict[str, Any]]:
    """The properties of every metric filter that feeds `metric`."""
    return [
        f["Properties"]
        for f in _of_type(template, "AWS::Logs::MetricFilter").values()
        if f["Properties"]["MetricTransformations"][0]["MetricName"] == metric
    ]


def test_every_alarm_notifies_the_required_address(template: dict[str, Any]) -> None:
    """AlarmEmail has no default and must be an address, and every alarm sends to its topic
    (on alarm and on recovery): no alarm that nobody hears."""
    parameter = template["Parameters"]["AlarmEmail"]
    assert "Default" not in parameter
    for accepted in ("ops@example.org", "first.last+data-acq@ops.example.co.uk"):
        assert re.fullmatch(parameter["AllowedPattern"], accepted), accepted
    for refused in ("", "ops", "ops@example", "ops @example.org", "a@b@example.org"):
        assert not re.fullmatch(parameter["AllowedPattern"], refused), refused

    rendered = _render(template)
    (topic,) = _of_type(rendered, "AWS::SNS::Topic")
    (subscription,) = _of_type(rendered, "AWS::SNS::Subscription").values()
    assert subscription["Properties"] == {
        "TopicArn": {"Ref": topic},
        "Protocol": "email",
        "Endpoint": {"Ref": "AlarmEmail"},
    }
    alarms = _alarms(rendered)
    assert set(alarms) == {
        "DaemonNotRunningAlarm",
        "CodeServerUnhealthyAlarm",
        "FailedRunsAlarm",
        "StaleRawDataAlarm",
        "DatabaseStorageLowAlarm",
    }
    for name, alarm in alarms.items():
        assert alarm["AlarmActions"] == [{"Ref": topic}], name
        assert alarm["OKActions"] == [{"Ref": topic}], name
    assert "HasAlarmEmail" not in template["Conditions"]


def test_failed_runs_alarm_counts_every_job_and_runs_the_daemon_fails(
    template: dict[str, Any],
) -> None:
    """RUN_FAILURE of any job in the run and daemon logs, and the daemon's lines for the runs it
    fails itself, run monitoring's and the run queue's launch errors (the lines themselves:
    test_deploy.py, from real runs and a real daemon)."""
    monitoring = _resources(template)["DaemonLogRunMonitoringFailureFilter"]["Properties"]
    assert monitoring["LogGroupName"] == {"Ref": "DaemonLogGroup"}
    (transformation,) = monitoring["MetricTransformations"]
    assert transformation["MetricName"] == "RunsFailedByDaemon"
    failures = _filters_of(template, "FailedRuns")
    assert sorted(f["LogGroupName"]["Ref"] for f in failures) == ["DaemonLogGroup", "RunLogGroup"]
    for failure in failures:
        assert failure["FilterPattern"] == '"- RUN_FAILURE -"'  # names no job

    alarm = _alarms(template)["FailedRunsAlarm"]
    stats = _metric_stats(alarm)
    assert {m["Metric"]["MetricName"] for m in stats.values()} == {
        "FailedRuns",
        "RunsFailedByDaemon",
    }
    assert all(
        m["Metric"]["Namespace"] == transformation["MetricNamespace"] for m in stats.values()
    )
    (expression,) = [m for m in alarm["Metrics"] if m.get("ReturnData")]
    assert all(f"FILL({metric_id}, 0)" in expression["Expression"] for metric_id in stats)
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["Threshold"] == 1
    assert "FailedDrainRunsAlarm" not in _resources(template)  # folded into this one


def test_stale_raw_data_alarm_counts_windows_that_stored_messages(
    template: dict[str, Any],
) -> None:
    """Drain windows that ended, less those that stored nothing, per minute; no such window in
    RawFreshnessMinutes minutes -- or no line at all -- is an alarm. RawFreshnessMinutes is also
    raw_messages' freshness in the UI (DATA_ACQ_RAW_FRESHNESS_MINUTES)."""
    parameter = template["Parameters"]["RawFreshnessMinutes"]
    assert int(parameter["Default"]) == Settings.from_env({}).raw_freshness_minutes == 30
    # a drain window (600 s by default) ends well within the shortest limit, and the longest
    # keeps the alarm's evaluation range (minutes x 60 s) within CloudWatch's one day
    assert parameter["MinValue"] * 60 > Settings.from_env({}).drain_window_s
    assert parameter["MaxValue"] * 60 <= 86_400

    (windows,) = _filters_of(template, "DrainWindowsEnded")
    (empty,) = _filters_of(template, "EmptyDrainWindowsEnded")
    assert windows["LogGroupName"] == empty["LogGroupName"] == {"Ref": "RunLogGroup"}
    alarm = _alarms(template)["StaleRawDataAlarm"]
    stats = _metric_stats(alarm)
    ids = {m["Metric"]["MetricName"]: metric_id for metric_id, m in stats.items()}
    assert set(ids) == {"DrainWindowsEnded", "EmptyDrainWindowsEnded"}
    assert all(m["Period"] == 60 and m["Stat"] == "Sum" for m in stats.values())
    (expression,) = [m for m in alarm["Metrics"] if m.get("ReturnData")]
    assert expression["Expression"] == (
        f"FILL({ids['DrainWindowsEnded']}, 0) - FILL({ids['EmptyDrainWindowsEnded']}, 0)"
    )
    assert (
        alarm["EvaluationPeriods"] == alarm["DatapointsToAlarm"] == {"Ref": "RawFreshnessMinutes"}
    )
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("LessThanThreshold", 1)
    assert alarm["TreatMissingData"] == "breaching"  # no drain ran: no line at all
    # the lines they must match are a real drain's: test_deploy.py


def test_code_server_alarm_watches_its_running_tasks(template: dict[str, Any]) -> None:
    """Container Insights' running task count of the code-server service, as for the daemon:
    no agent to run; minutes without a task, or no report at all, breach."""
    resources = _resources(template)
    cluster = resources["Cluster"]["Properties"]
    assert {"Name": "containerInsights", "Value": "enabled"} in cluster["ClusterSettings"]
    for name, service in (
        ("CodeServerUnhealthyAlarm", "CodeServerService"),
        ("DaemonNotRunningAlarm", "DaemonService"),
    ):
        alarm = _alarms(template)[name]
        assert (alarm["Namespace"], alarm["MetricName"]) == (
            "ECS/ContainerInsights",
            "RunningTaskCount",
        )
        assert {"Name": "ServiceName", "Value": {"Fn::GetAtt": [service, "Name"]}} in alarm[
            "Dimensions"
        ]
        assert alarm["Statistic"] == "Minimum" and alarm["Threshold"] == 1
        assert alarm["ComparisonOperator"] == "LessThanThreshold"
        assert alarm["TreatMissingData"] == "breaching"
    code = _alarms(template)["CodeServerUnhealthyAlarm"]
    assert code["DatapointsToAlarm"] < code["EvaluationPeriods"]  # a crash loop's gaps add up
    # a deployment replaces the task (one code server at a time, never old and new snapshots at
    # once): its gap, a task's stop and start, stays under the alarm's 3 minutes
    deployment = resources["CodeServerService"]["Properties"]["DeploymentConfiguration"]
    assert (deployment["MaximumPercent"], deployment["MinimumHealthyPercent"]) == (100, 0)
    assert code["DatapointsToAlarm"] >= 3
    health = resources["CodeServerTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert health["HealthCheck"]["Command"][:4] == ["CMD", "dagster", "api", "grpc-health-check"]


# Dagster's database grows by under 100 MB a day at 300 sites (runs, event logs, ticks), and
# purge_old_runs keeps 90 days of runs (data_acq/defs/jobs.py)
DAGSTER_MB_A_DAY = 100
RETENTION_DAYS = 90


def test_database_storage_holds_its_retention_and_alarms_before_it_fills(
    template: dict[str, Any],
) -> None:
    """The allocated storage holds the retained runs twice over (PostgreSQL reuses deleted rows'
    space, not returns it; WAL and catalogs come on top), autoscaling holds years of growth, and
    the free storage alarm is at 20% of the allocation."""
    from data_acq.defs.jobs import RunRetention

    assert RunRetention().days == RETENTION_DAYS
    database = _resources(template)["Database"]["Properties"]
    allocated, ceiling = int(database["AllocatedStorage"]), int(database["MaxAllocatedStorage"])
    retained_gb = DAGSTER_MB_A_DAY * RETENTION_DAYS / 1000  # 9 GB at steady state
    assert allocated >= 4 * retained_gb
    assert ceiling / (DAGSTER_MB_A_DAY / 1000) / 365 >= 5  # years of growth, even unpurged
    assert database["StorageType"] == "gp3"
    assert database["DBInstanceClass"] == {"Ref": "DatabaseInstanceClass"}
    assert template["Parameters"]["DatabaseInstanceClass"]["Default"] == "db.t4g.micro"

    alarm = _alarms(template)["DatabaseStorageLowAlarm"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/RDS", "FreeStorageSpace")
    assert alarm["Dimensions"] == [{"Name": "DBInstanceIdentifier", "Value": {"Ref": "Database"}}]
    assert alarm["Threshold"] == allocated * 0.2 * 2**30  # 20% of the allocation, in bytes
    assert alarm["ComparisonOperator"] == "LessThanThreshold"
    # the steady state stays above it: what the retention holds, twice, is used at most
    assert (allocated - 2 * retained_gb) * 2**30 > alarm["Threshold"]


# --- processing settings, the Glue tables over the curated data, the run tasks' access ---------

PROCESSING_ENV = {
    "DATA_ACQ_BUCKETS": "Buckets",
    "DATA_ACQ_START_DATE": "StartDate",
    "DATA_ACQ_REFRESH_INTERVAL": "RefreshIntervalSeconds",
    "DATA_ACQ_LIVE_WORKERS": "LiveWorkers",
    "DATA_ACQ_LIVE_WINDOW": "LiveWindowSeconds",
    "DATA_ACQ_HANDOVER": "HandoverSeconds",
    "DATA_ACQ_BACKFILL_RUNS": "BackfillRuns",
    "DATA_ACQ_RAW_FRESHNESS_MINUTES": "RawFreshnessMinutes",
}
CURATED_TABLES = (*layout.HOURLY_TABLES, *layout.DAILY_TABLES)
# Fargate's task sizes (Linux): cpu units -> the memory sizes (MiB) allowed with them
FARGATE_MEMORY = {
    256: {512, 1024, 2048},
    512: set(range(1024, 4096 + 1, 1024)),
    1024: set(range(2048, 8192 + 1, 1024)),
    2048: set(range(4096, 16384 + 1, 1024)),
    4096: set(range(8192, 30720 + 1, 1024)),
}


def _environments(rendered: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each task definition's (family's) container environment, name -> value."""
    return {
        _family(definition): {
            e["Name"]: e["Value"]
            for e in definition["Properties"]["ContainerDefinitions"][0]["Environment"]
        }
        for definition in _of_type(rendered, "AWS::ECS::TaskDefinition").values()
    }


def _renderer() -> ModuleType:
    """deploy/render_instance.py (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("render_instance", RENDERER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_processing_settings_reach_every_dagster_container(template: dict[str, Any]) -> None:
    """Buckets, StartDate, RefreshIntervalSeconds, LiveWorkers, LiveWindowSeconds,
    HandoverSeconds, BackfillRuns and RawFreshnessMinutes become their DATA_ACQ_* variables in
    the webserver, daemon, code server and run task, with the defaults and bounds that
    data_acq.settings (and, for DATA_ACQ_BACKFILL_RUNS, the run queue's renderer) has: the code
    server, the daemon's run queue and the runs must agree."""
    parameters = template["Parameters"]
    defaults = Settings.from_env({})
    renderer = _renderer()
    assert int(parameters["Buckets"]["Default"]) == defaults.buckets == 1
    assert parameters["StartDate"]["Default"] == defaults.start_date.isoformat()
    assert int(parameters["RefreshIntervalSeconds"]["Default"]) == defaults.refresh_interval_s
    assert int(parameters["LiveWorkers"]["Default"]) == defaults.live_workers == 1
    assert int(parameters["LiveWindowSeconds"]["Default"]) == defaults.live_window_s == 600
    assert int(parameters["HandoverSeconds"]["Default"]) == defaults.handover_s == 90
    assert int(parameters["BackfillRuns"]["Default"]) == renderer.backfill_runs({}) == 4
    assert int(parameters["RawFreshnessMinutes"]["Default"]) == defaults.raw_freshness_minutes

    def settings(env: dict[str, str]) -> object:
        return Settings.from_env(env)

    # parameter: (variable, what reads it, the other settings it is read with)
    checks: dict[str, tuple[str, Callable[[dict[str, str]], object], dict[str, str]]] = {
        "Buckets": ("DATA_ACQ_BUCKETS", settings, {}),
        "RefreshIntervalSeconds": ("DATA_ACQ_REFRESH_INTERVAL", settings, {}),
        # as many buckets as CloudFormation allows: only the live workers' own bounds count
        "LiveWorkers": ("DATA_ACQ_LIVE_WORKERS", settings, {"DATA_ACQ_BUCKETS": "4096"}),
        "LiveWindowSeconds": ("DATA_ACQ_LIVE_WINDOW", settings, {}),
        "HandoverSeconds": ("DATA_ACQ_HANDOVER", settings, {}),
        "BackfillRuns": ("DATA_ACQ_BACKFILL_RUNS", renderer.backfill_runs, {}),
    }
    for name, (variable, read, others) in checks.items():
        low, high = parameters[name]["MinValue"], parameters[name]["MaxValue"]
        for accepted in (low, high):  # what CloudFormation lets through, the settings take
            read({**others, variable: str(accepted)})
        for refused in (low - 1, high + 1):  # and they refuse what it refuses
            with pytest.raises(SettingsError):
                read({**others, variable: str(refused)})
    # the freshness limit is narrower than the settings' (2 to 100,000 minutes): the stale raw
    # data alarm needs more than a drain window and at most a day (its test above)
    freshness = parameters["RawFreshnessMinutes"]
    for accepted in (freshness["MinValue"], freshness["MaxValue"]):
        Settings.from_env({"DATA_ACQ_RAW_FRESHNESS_MINUTES": str(accepted)})
    # a full rebuild is needed when the buckets change: the description says so
    assert "rebuilt" in parameters["Buckets"]["Description"]
    pattern = parameters["StartDate"]["AllowedPattern"]
    for accepted in ("2024-10-01", "2025-12-31", "2030-02-28"):
        assert re.fullmatch(pattern, accepted), accepted
        Settings.from_env({"DATA_ACQ_START_DATE": accepted})
    for refused in ("2024-13-01", "2024-10-1", "24-10-01", "2024/10/01", "", "2024-10-01 "):
        assert not re.fullmatch(pattern, refused), refused

    environments = _environments(_render(template))
    assert set(environments) == {
        "data-acq-webserver",
        "data-acq-daemon",
        "data-acq-code-server",
        "data-acq-run",
        "data-acq-drain",
    }
    for family, env in environments.items():
        for variable, parameter in PROCESSING_ENV.items():
            assert env[variable] == {"Ref": parameter}, (family, variable)


def test_rules_refuse_more_live_workers_than_one_bucket(template: dict[str, Any]) -> None:
    """Rules cannot compare numbers: they refuse the common mistake (more live workers with
    Buckets left at 1); past it, the containers refuse at start (test_deploy.py)."""
    (refusal,) = _refusals(template, LiveWorkers="2")
    assert "LiveWorkers" in refusal and "Buckets" in refusal
    assert _refusals(template, LiveWorkers="2", Buckets="2") == []
    assert _refusals(template, LiveWorkers="1", Buckets="32") == []
    with pytest.raises(SettingsError, match="DATA_ACQ_LIVE_WORKERS"):
        Settings.from_env({"DATA_ACQ_LIVE_WORKERS": "3", "DATA_ACQ_BUCKETS": "2"})


def test_run_tasks_are_sized_per_job_within_fargate_sizes(template: dict[str, Any]) -> None:
    """The run task definition's size is the processing size; the jobs' ecs/cpu and ecs/memory
    tags (EcsRunLauncher's per-run overrides) are valid Fargate sizes, and overriding needs no
    permission beyond running the run task definition."""
    run = _resources(template)["RunTaskDefinition"]["Properties"]
    assert (run["Cpu"], run["Memory"]) == (
        PROCESSING_TASK["ecs/cpu"],
        PROCESSING_TASK["ecs/memory"],
    )
    for size in (SMALL_TASK, PROCESSING_TASK, {"ecs/cpu": run["Cpu"], "ecs/memory": run["Memory"]}):
        assert int(size["ecs/memory"]) in FARGATE_MEMORY[int(size["ecs/cpu"])], size
    assert "Cpu" not in run["ContainerDefinitions"][0]  # the task's size is the container's
    assert "Memory" not in run["ContainerDefinitions"][0]


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, list[tuple[str, str]]]:
    """A small simulated fleet processed by data_acq.pipeline into a local store that records
    every write and delete: (store, [(operation, key)])."""
    operations: list[tuple[str, str]] = []

    class RecordingStore(LocalStore):
        def put_new(self, key: str, data: bytes) -> None:
            operations.append(("put", key))
            super().put_new(key, data)

        def put(self, key: str, data: bytes) -> None:
            operations.append(("put", key))
            super().put(key, data)

        def put_file(self, key: str, path: Path) -> None:
            operations.append(("put", key))
            super().put_file(key, path)

        def delete(self, keys: list[str]) -> None:
            operations.extend(("delete", key) for key in keys)
            super().delete(keys)

    store = RecordingStore(tmp_path_factory.mktemp("processed") / "data")
    spec = SimulationSpec(
        sites=4,
        start=datetime(2024, 10, 12, 21, tzinfo=UTC),
        minutes=5 * 60,
        seed=12,
        outage_minutes=90,
        malformed_rate=0.05,  # rejects too
    )
    received = datetime(2024, 10, 13, 2, tzinfo=UTC)
    lines = (encode_record(topic, body, received, 1) for topic, body in simulate(spec))
    store.put_new(raw_key(received, "test"), encode_object(lines))
    process(store)
    # on S3 the warehouse is uploaded with put_file; a local store replaces the file in place
    operations.append(("put", layout.WAREHOUSE_FILE))
    # the Delta tables' files and log are written by deltalake, not through the store: every
    # file under curated/ was written, and those the upkeep's expiry removes were deleted
    curated = store.root / layout.CURATED
    before = {p.relative_to(store.root).as_posix() for p in curated.rglob("*") if p.is_file()}
    upkeep(CuratedTables(store), retain=timedelta(0))
    after = {p.relative_to(store.root).as_posix() for p in curated.rglob("*") if p.is_file()}
    operations.extend(("put", key) for key in sorted(before | after))
    operations.extend(("delete", key) for key in sorted(before - after))
    return store, operations


def _hive_type(arrow_type: pa.DataType) -> str:
    """The Athena (Hive DDL) type that reads a Parquet column of this Arrow type."""
    if (
        pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or pa.types.is_string_view(arrow_type)
    ):
        return "string"
    if pa.types.is_timestamp(arrow_type):
        return "timestamp"
    if pa.types.is_float64(arrow_type):
        return "double"
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_int64(arrow_type) or pa.types.is_uint32(arrow_type):
        return "bigint"  # an unsigned 32-bit count does not fit Hive's (signed) int
    if pa.types.is_int32(arrow_type):
        return "int"
    if pa.types.is_int16(arrow_type):
        return "smallint"
    if pa.types.is_int8(arrow_type):
        return "tinyint"
    if pa.types.is_date32(arrow_type):
        return "date"
    if (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_list_view(arrow_type)
    ):
        return f"array<{_hive_type(arrow_type.value_type)}>"
    if pa.types.is_struct(arrow_type):
        fields = ",".join(f"{f.name}:{_hive_type(f.type)}" for f in arrow_type)
        return f"struct<{fields}>"
    raise AssertionError(f"no Hive type chosen for {arrow_type}")


def _glue_tables(rendered: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        table["Properties"]["TableInput"]["Name"]: table["Properties"]["TableInput"]
        for table in _of_type(rendered, "AWS::Glue::Table").values()
    }


def test_glue_tables_read_every_curated_delta_table(template: dict[str, Any]) -> None:
    """CreateGlue=true: one Glue table per curated table, each Athena's native Delta reader
    over the table's folder (no partitions to project: the log lists the files); false: no
    Glue or Athena resource at all."""
    off = _render(template)["Resources"]
    assert not [n for n, r in off.items() if r["Type"].startswith(("AWS::Glue::", "AWS::Athena"))]

    rendered = _render(template, CreateGlue="true")
    (database,) = _of_type(rendered, "AWS::Glue::Database").values()
    name = database["Properties"]["DatabaseInput"]["Name"]
    # named for the stack, in the characters Glue and Athena take
    assert _evaluate(name, {"AWS::StackName": "data-acq-staging"}, None) == "data_acq_staging"
    tables = _glue_tables(rendered)
    assert sorted(tables) == sorted(CURATED_TABLES)
    for name, table in tables.items():
        assert table["TableType"] == "EXTERNAL_TABLE"
        assert table["Parameters"]["table_type"] == "DELTA"
        assert "PartitionKeys" not in table
        assert not [k for k in table["Parameters"] if k.startswith("projection.")]
        location = {"Fn::Sub": f"s3://${{DataBucket}}/data/{layout.curated_prefix(name)}"}
        storage = table["StorageDescriptor"]
        assert storage["Location"] == location
        assert storage["SerdeInfo"]["Parameters"]["path"] == location


def test_glue_columns_are_the_delta_tables_columns(
    template: dict[str, Any], processed: tuple[LocalStore, list[tuple[str, str]]]
) -> None:
    """Each Glue table's columns are, in name, order and Athena type, those of the Delta table
    the pipeline writes (its log's schema, which is also the schema it was created with)."""
    store, _ = processed
    tables = _glue_tables(_render(template, CreateGlue="true"))
    for name in CURATED_TABLES:
        written = DeltaTable(str(store.root / layout.curated_prefix(name)))
        assert written.version() > 0, f"the simulation wrote nothing into {name}"
        schema = pa.schema(written.schema())
        from_log = [{"Name": f.name, "Type": _hive_type(f.type)} for f in schema]
        assert tables[name]["StorageDescriptor"]["Columns"] == from_log, name
        declared = pl.DataFrame(schema=table_schema(name)).to_arrow().schema
        assert [{"Name": f.name, "Type": _hive_type(f.type)} for f in declared] == from_log, name


def _statements(policy: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(policy["Properties"]["PolicyDocument"]["Statement"])


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _role_statements(resources: Mapping[str, Any], role: str) -> list[dict[str, Any]]:
    """Every statement of a role: its managed policies' and its inline ones."""
    properties = resources[role]["Properties"]
    managed = [resources[arn["Ref"]] for arn in properties.get("ManagedPolicyArns", [])]
    inline = [p["PolicyDocument"]["Statement"] for p in properties.get("Policies", [])]
    return [s for statements in [*map(_statements, managed), *inline] for s in statements]


def _object_patterns(statements: list[dict[str, Any]], action: str) -> list[str]:
    """Object key patterns (`data/*`) in the data bucket that the statements allow `action` on."""
    patterns = []
    for statement in statements:
        if statement["Effect"] == "Allow" and action in _as_list(statement["Action"]):
            for resource in _as_list(statement["Resource"]):
                text = resource.get("Fn::Sub", "") if isinstance(resource, Mapping) else resource
                if text.startswith("${DataBucket.Arn}/"):
                    patterns.append(text.removeprefix("${DataBucket.Arn}/"))
    return patterns


def test_run_tasks_may_write_the_data_and_delete_only_pending_markers(
    template: dict[str, Any], processed: tuple[LocalStore, list[tuple[str, str]]]
) -> None:
    """Every key the pipeline wrote or deleted (a recorded run over simulated data) is allowed to
    the task role under DATA_ACQ_STORAGE=s3://<bucket>/data, and the only deletes allowed in
    data/ are the pending markers and, in curated/, the files the Delta tables' upkeep expires:
    raw and staging objects are never deleted."""
    _, operations = processed
    resources = _resources(template)
    role = resources["TaskRole"]["Properties"]
    assert {"Ref": "DataAccessPolicy"} in role["ManagedPolicyArns"]
    statements = _role_statements(resources, "TaskRole")
    # raw objects are the drains' (the drain role's), the rest processing's
    puts = [
        *_object_patterns(statements, "s3:PutObject"),
        *_object_patterns(_role_statements(resources, "DrainRole"), "s3:PutObject"),
    ]
    gets = _object_patterns(statements, "s3:GetObject")
    deletes = _object_patterns(statements, "s3:DeleteObject")
    assert [p for p in deletes if p.startswith("data/")] == [
        "data/state/pending/*",
        "data/curated/*",
    ]

    written = {key for operation, key in operations if operation == "put"}
    deleted = {key for operation, key in operations if operation == "delete"}
    assert {key.split("/")[0] for key in deleted} == {"state", "curated"}
    assert all(key.startswith((layout.PENDING, layout.CURATED)) for key in deleted)
    prefixes = {key.split("/", 1)[0] for key in written}
    assert {"raw", "staging", "state", "curated", layout.WAREHOUSE_FILE} <= prefixes
    for key in written:
        assert any(fnmatch.fnmatchcase(f"data/{key}", p) for p in puts), key
        assert any(fnmatch.fnmatchcase(f"data/{key}", p) for p in gets), key
    for key in deleted:
        assert any(fnmatch.fnmatchcase(f"data/{key}", p) for p in deletes), key
    never_deleted = [layout.RAW, layout.STAGING, layout.CURSOR]
    for prefix in never_deleted:
        assert not any(fnmatch.fnmatchcase(f"data/{prefix}x", p) for p in deletes), prefix

    # listing under data/, and HeadBucket (the storage check before a drain), which S3
    # authorises as s3:ListBucket without a prefix
    lists = [s for s in statements if s["Action"] == "s3:ListBucket"]
    conditions = [
        s.get("Condition") for s in lists if s["Resource"] == {"Fn::GetAtt": ["DataBucket", "Arn"]}
    ]
    assert {"StringLike": {"s3:prefix": ["data/*"]}} in conditions
    assert {"Null": {"s3:prefix": "true"}} in conditions


def test_drains_and_processing_have_their_own_roles(template: dict[str, Any]) -> None:
    """Drain runs, processing runs and the code server run under different task roles; only the
    drains' task and execution roles reach the MQTT secret, only the drains write raw/, and
    the bucket refuses a raw write without If-None-Match (an overwrite of the archive)."""
    rendered = _resources(_render(template))
    tasks = {
        _family(d): d["Properties"]
        for d in _of_type({"Resources": rendered}, "AWS::ECS::TaskDefinition").values()
    }
    roles = {
        family: (props["TaskRoleArn"]["Fn::GetAtt"][0], props["ExecutionRoleArn"]["Fn::GetAtt"][0])
        for family, props in tasks.items()
    }
    assert roles["data-acq-drain"] == ("DrainRole", "DrainExecutionRole")
    assert roles["data-acq-run"] == ("TaskRole", "ExecutionRole")
    assert roles["data-acq-code-server"][0] == "CodeServerRole"
    assert len({task for task, _ in roles.values()}) == len(roles) - 1  # webserver, daemon share

    def reaches_mqtt_secret(role: str) -> bool:
        return any(
            (
                statement["Effect"] == "Allow"
                and {"secretsmanager:GetSecretValue", "secretsmanager:*", "*"}
                & set(_as_list(statement["Action"]))
                and {"Ref": "MqttSecret"} in _as_list(statement["Resource"])
            )
            or (
                statement["Resource"] == "*"
                and "secretsmanager:GetSecretValue" in _as_list(statement["Action"])
            )
            for statement in _role_statements(rendered, role)
        )

    for family, (task_role, execution_role) in roles.items():
        drain = family == "data-acq-drain"
        assert reaches_mqtt_secret(execution_role) == drain, family
        assert not reaches_mqtt_secret(task_role), family  # the code never reads it itself
        writes_raw = any(
            fnmatch.fnmatchcase("data/raw/date=2024-10-12/hour=07/x.ndjson.gz", pattern)
            for pattern in _object_patterns(_role_statements(rendered, task_role), "s3:PutObject")
        )
        assert writes_raw == drain, family

    (deny,) = [
        s
        for s in _statements(rendered["DataBucketPolicy"])
        if s["Effect"] == "Deny" and "s3:PutObject" in _as_list(s["Action"])
    ]
    assert deny["Principal"] == "*"
    assert deny["Resource"] == {"Fn::Sub": "${DataBucket.Arn}/data/raw/*"}
    assert deny["Condition"] == {"Null": {"s3:if-none-match": "true"}}


def test_runs_run_on_the_image_of_the_code_that_created_them(template: dict[str, Any]) -> None:
    """A deploy never has new code execute a run that old code created: the code server names
    its own deployment's run task definitions (by revision: the processing one in its container
    context, which Dagster prefers to the launcher's, test_deploy.py; the drain's in the drain
    job's tag), and a deploy keeps the revisions it replaces, so runs queued before it launch."""
    resources = _render(template)["Resources"]
    environments = _environments({"Resources": resources})
    run_arn = "arn:aws:ecs:eu-west-1:123456789012:task-definition/data-acq-run-prod:7"
    context = environments["data-acq-code-server"]["DAGSTER_CONTAINER_CONTEXT"]
    assert json.loads(_evaluate(context, {"RunTaskDefinition": run_arn}, None)) == {
        "ecs": {"task_definition_arn": run_arn}
    }
    for family in ("data-acq-webserver", "data-acq-daemon", "data-acq-code-server"):
        drain_task = environments[family]["DATA_ACQ_DRAIN_TASK_DEFINITION"]
        assert drain_task == {"Ref": "DrainTaskDefinition"}, family  # an ARN with its revision
    for name in ("RunTaskDefinition", "DrainTaskDefinition"):
        assert resources[name]["UpdateReplacePolicy"] == "Retain", name


def test_two_stacks_can_share_an_account(template: dict[str, Any]) -> None:
    """Every name an account holds once is named for the stack: task families (_family), the
    Cloud Map namespace the webserver and daemon find the code server in, the Glue database
    (test_glue_tables_read_every_curated_delta_table)."""
    resources = _render(template)["Resources"]
    namespace = resources["ServiceDiscoveryNamespace"]["Properties"]["Name"]
    assert namespace == {"Fn::Sub": "${AWS::StackName}.local"}
    environments = _environments({"Resources": resources})
    for family in ("data-acq-webserver", "data-acq-daemon"):
        host = environments[family]["DAGSTER_CODE_HOST"]
        assert host == {"Fn::Sub": "code.${AWS::StackName}.local"}, family


def test_tasks_pull_only_the_image_repository(template: dict[str, Any]) -> None:
    """ImageUri is an image in this account's ECR, by tag or digest, and the tasks may pull
    from its repository alone."""
    parameter = template["Parameters"]["ImageUri"]
    ecr = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    accepted = [f"{ecr}/data-acq:1.4.0", f"{ecr}/data-acq@sha256:{'ab' * 32}"]
    for uri in accepted:
        assert re.fullmatch(parameter["AllowedPattern"], uri), uri
    for uri in ("data-acq:1.4.0", f"{ecr}/data-acq", "docker.io/library/python:3.11", ""):
        assert not re.fullmatch(parameter["AllowedPattern"], uri), uri
    (pull,) = [
        statement
        for statement in _statements(_render(template)["Resources"]["TaskStartPolicy"])
        if "ecr:BatchGetImage" in _as_list(statement["Action"])
    ]
    for uri in accepted:
        arn = _evaluate(pull["Resource"], {"AWS::Partition": "aws", "ImageUri": uri}, None)
        assert arn == "arn:aws:ecr:eu-west-1:123456789012:repository/data-acq", uri


def test_athena_workgroup_and_analyst_policy(template: dict[str, Any]) -> None:
    """The optional workgroup keeps its results in the bucket (expired by lifecycle), and the
    analysts' policy reads the curated data only."""
    resources = _render(template, CreateGlue="true")["Resources"]
    (workgroup,) = _of_type({"Resources": resources}, "AWS::Athena::WorkGroup").values()
    config = workgroup["Properties"]["WorkGroupConfiguration"]
    assert config["EnforceWorkGroupConfiguration"] is True
    assert config["ResultConfiguration"]["OutputLocation"] == {
        "Fn::Sub": "s3://${DataBucket}/athena-results/"
    }
    rules = resources["DataBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert any(r.get("Prefix") == "athena-results/" and r.get("ExpirationInDays") for r in rules)

    statements = _statements(resources["AnalystAccessPolicy"])
    assert _object_patterns(statements, "s3:GetObject") == [
        "data/curated/*",
        "athena-results/*",
    ]
    assert _object_patterns(statements, "s3:PutObject") == ["athena-results/*"]
    assert not _object_patterns(statements, "s3:DeleteObject")


def test_rewritten_objects_keep_old_versions_briefly(template: dict[str, Any]) -> None:
    """curated/ and state/ objects are rewritten at every refresh of their unit: their noncurrent
    versions expire sooner than the bucket-wide 30 days; raw's are never rewritten."""
    rules = _resources(template)["DataBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    noncurrent = {
        r.get("Prefix", ""): r["NoncurrentVersionExpiration"]["NoncurrentDays"]
        for r in rules
        if "NoncurrentVersionExpiration" in r
    }
    assert noncurrent[""] == 30
    assert noncurrent[f"data/{layout.CURATED}"] <= 3
    assert noncurrent[f"data/{layout.STATE}"] <= 3


def test_the_deploy_command_uploads_a_template_this_large() -> None:
    """CloudFormation takes a template body of at most 51,200 bytes; a larger one must come from
    S3, which `aws cloudformation deploy` does with --s3-bucket."""
    size = len(TEMPLATE.read_bytes())
    if size > 51_200:
        deploy_doc = (TEMPLATE.parents[1] / "docs" / "deploy.md").read_text()
        command = deploy_doc.split("aws cloudformation deploy", 1)[1].split("\n\n", 1)[0]
        assert "--s3-bucket" in command, f"the template is {size:,} bytes"
