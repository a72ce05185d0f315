"""The resource: process attributes, container id, environment capture with secrets redacted."""

from __future__ import annotations

import os

import pytest

from tasktree.instrumentation.environment import (
    ENV_ATTRIBUTE_PREFIX,
    REDACTED,
    build_resource,
    captured_environment,
    container_id,
    is_secret_name,
    mask_url_passwords,
    redacted_args,
    redacted_text,
)

R = REDACTED
ENVIRON = {
    "BATCH_DATE": "2024-05-01",
    "BATCH_API_TOKEN": "tok-123",
    "BATCH_DB_PASSWORD": "hunter2",
    "BATCH_AWS_SECRET_ACCESS_KEY": "abc",
    "BATCH_CREDENTIALS_FILE": "/run/creds",
    "BATCH_CREDENTIALS": "hunter2-creds",
    "BATCH_DATABASE_URL": "postgresql://etl:s3cret@db:5432/warehouse",
    "BATCH_private_key_path": "/k",
    "BATCH_private_key": "/hunter2/k",
    "OTHER": "not captured",
    "PWD": "/home/job",
}


def test_capture_takes_names_matching_the_globs_and_redacts_secret_looking_ones():
    captured = captured_environment("BATCH_*,PWD", environ=ENVIRON)
    prefix = "process.environment_variable."
    assert captured[prefix + "BATCH_DATE"] == "2024-05-01"
    assert captured[prefix + "PWD"] == "/home/job"  # PWD is a directory, not a password
    secrets = ("BATCH_API_TOKEN", "BATCH_DB_PASSWORD", "BATCH_AWS_SECRET_ACCESS_KEY")
    for name in (*secrets, "BATCH_CREDENTIALS", "BATCH_private_key"):
        assert captured[prefix + name] == REDACTED
    # a path to a credentials file is no secret: the name says it is a file
    assert captured[prefix + "BATCH_CREDENTIALS_FILE"] == "/run/creds"
    assert captured[prefix + "BATCH_private_key_path"] == "/k"
    assert (
        captured[prefix + "BATCH_DATABASE_URL"] == f"postgresql://etl:{REDACTED}@db:5432/warehouse"
    )
    assert prefix + "OTHER" not in captured
    assert (
        "hunter2" not in repr(captured)
        and "tok-123" not in repr(captured)
        and "s3cret" not in repr(captured)
    )


def test_capture_reads_its_globs_and_extra_redactions_from_the_environment(monkeypatch):
    monkeypatch.setenv("TASKTREE_CAPTURE_ENV", " BATCH_DATE , OTHER")
    monkeypatch.setenv("TASKTREE_REDACT_ENV", "OTH*")
    captured = captured_environment(environ=ENVIRON)
    assert captured == {
        "process.environment_variable.BATCH_DATE": "2024-05-01",
        "process.environment_variable.OTHER": REDACTED,
    }


def test_nothing_is_captured_by_default(monkeypatch):
    monkeypatch.delenv("TASKTREE_CAPTURE_ENV", raising=False)
    assert captured_environment(environ=ENVIRON) == {}


@pytest.mark.parametrize("name", [
    "GITHUB_TOKEN", "db_password", "MY_SECRET", "SESSION_ID", "API_KEY",
    "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS",  # where ingest tokens go
    "DB_PASS", "MYSQL_PWD", "SMTP_PWD", "GITHUB_PAT", "SLACK_WEBHOOK_URL", "AZURE_STORAGE_SIG",
    "AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY", "DBPASSWORD", "PGPASSWORD", "SENTRY_DSN",
    "PRIVATE_KEY", "JWT", "COOKIE", "apiKey", "authToken", "GHTOKEN", "NPM_TOKENS", "auth",
    "HTTP_AUTH", "BW_SESSION", "SESSIONID", "DB_PASSPHRASE", "spring.datasource.password",
    "fs.s3a.secret.key", "AUTH_HEADER", "SIGNING_KEY", "TLS_CERT", "DB_CREDS",
])  # fmt: skip
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", [
    "PATH", "PWD", "OLDPWD", "HOME", "SIGNAL_NAME", "PATTERN",
    # once hidden, as a word matched inside another (TOKENIZER, AUTHOR, KEYBOARD, AUTH0), or a
    # switch, a count or a key into data
    "TOKENIZER_PATH", "tokenizer-path", "AUTHOR_NAME", "author", "SORT_KEY", "primary-key",
    "NUM_PASSES", "max-tokens", "SESSION_DATE", "KEYBOARD", "AUTH0_DOMAIN", "use-auth",
    "no-password", "SSH_AUTH_SOCK", "AUTH_DOMAIN",
])  # fmt: skip
def test_names_that_are_no_secrets(name):
    assert not is_secret_name(name)


def test_extra_redactions_match_whatever_the_case():
    environ = {"MY_CONN": "host=db password=x", "OTHER": "y", "KEPT": "z"}
    captured = captured_environment("*", "my_conn, other ", environ=environ)
    prefix = "process.environment_variable."
    assert captured == {prefix + "MY_CONN": REDACTED, prefix + "OTHER": REDACTED,
                        prefix + "KEPT": "z"}  # fmt: skip


@pytest.mark.parametrize("url, masked", [
    ("postgresql://u:p@ss-hunter2@h/db", f"postgresql://u:{REDACTED}@h/db"),
    ("https://h/db?password=hunter2&sslmode=require",
     f"https://h/db?password={REDACTED}&sslmode=require"),
    ("https://acct.blob/c?sv=1&sig=hunter2%2F&se=2", f"https://acct.blob/c?sv=1&sig={REDACTED}&se=2"),
    ("https://api/x?access_token=hunter2", f"https://api/x?access_token={REDACTED}"),
    ("http://example.com/a@b?page=2", "http://example.com/a@b?page=2"),  # no userinfo
    ("user@host:/srv/data", "user@host:/srv/data"),
])  # fmt: skip
def test_url_passwords_and_secret_query_parameters_are_masked(url, masked):
    assert mask_url_passwords(url) == masked


def test_url_passwords_and_secret_options_are_masked_in_command_lines():
    assert (
        mask_url_passwords("redis://:pw@h:6379/0 and https://u:p@x")
        == f"redis://:{REDACTED}@h:6379/0 and https://u:{REDACTED}@x"
    )
    args = ["job", "--password=x", "--api-key", "k", "--no-auth", "file.csv", "--verbose"]
    hidden = f"--password={REDACTED}"
    assert redacted_args(args) == [
        "job", hidden, "--api-key", REDACTED, "--no-auth", "file.csv", "--verbose",
    ]  # fmt: skip


def test_secrets_in_other_shapes_of_arguments_are_masked():
    args = ["tool", "--pass=hunter2a", "--auth", "hunter2b", "--access-key", "hunter2c",
            "PGPASSWORD=hunter2d", "--db-password", "hunter2e", "-no-auth", "kept.txt", "A=kept"]
    assert redacted_args(args) == [
        "tool", f"--pass={REDACTED}", "--auth", REDACTED, "--access-key", REDACTED,
        f"PGPASSWORD={REDACTED}", "--db-password", REDACTED, "-no-auth", "kept.txt", "A=kept",
    ]  # fmt: skip


def test_secrets_inside_a_script_argument_are_masked():
    script = ("psql --password hunter2a -h db --no-auth kept && TOKEN=hunter2b run"
              " && curl -H 'Authorization: Bearer hunter2c' https://u:hunter2d@h/?token=hunter2e")
    [shell, flag, masked] = redacted_args(["sh", "-c", script])
    assert (shell, flag) == ("sh", "-c") and "hunter2" not in masked
    assert masked == (
        f"psql --password {REDACTED} -h db --no-auth kept && TOKEN={REDACTED} run"
        f" && curl -H 'Authorization: Bearer {REDACTED}' https://u:{REDACTED}@h/?token={REDACTED}"
    )


def test_container_id_from_cgroup_v1_then_mountinfo(tmp_path):
    cid = "a" * 64
    cgroup, mountinfo = tmp_path / "cgroup", tmp_path / "mountinfo"
    cgroup.write_text(f"12:memory:/docker/{cid}\n")
    assert container_id(str(cgroup), str(mountinfo)) == cid
    cgroup.write_text("0::/\n")
    mountinfo.write_text(
        f"1 2 0:3 /var/lib/docker/containers/{'b' * 64}/hostname /etc/hostname rw - ext4 x rw\n"
    )
    assert container_id(str(cgroup), str(mountinfo)) == "b" * 64
    mountinfo.write_text("1 2 0:3 / / rw - ext4 x rw\n")
    assert container_id(str(cgroup), str(mountinfo)) is None
    assert container_id(str(tmp_path / "none"), str(tmp_path / "none")) is None


def test_resource_has_host_process_runtime_and_user_and_env_beats_detection(monkeypatch):
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "host.name=override,team=data")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    attributes = build_resource(capture_env="").attributes
    assert attributes["host.name"] == "override" and attributes["team"] == "data"
    assert attributes["process.pid"] == os.getpid()
    assert attributes["process.runtime.name"] == "cpython"
    assert attributes["process.owner"]
    assert attributes["process.command_line"]
    assert attributes["service.name"]


def test_service_name_argument_beats_otel_service_name_which_beats_the_default(monkeypatch):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    assert build_resource().attributes["service.name"] == "from-env"
    assert build_resource(service_name="explicit").attributes["service.name"] == "explicit"


@pytest.mark.parametrize("args, shown", [
    (["sshpass", "-p", "pw1", "ssh", "-p", "22", "h"],
     ["sshpass", "-p", R, "ssh", "-p", "22", "h"]),
    (["sshpass", "-ppw1", "ssh", "h"], ["sshpass", f"-p{R}", "ssh", "h"]),
    (["docker", "login", "-u", "alice", "-p", "pw1", "r.io"],
     ["docker", "login", "-u", "alice", "-p", R, "r.io"]),
    (["docker", "run", "-p", "8080:80", "img"], ["docker", "run", "-p", "8080:80", "img"]),
    (["mysql", "-uroot", "-ppw1", "-P", "3306", "db"],
     ["mysql", "-uroot", f"-p{R}", "-P", "3306", "db"]),
    (["/usr/bin/redis-cli", "-p", "6379", "-a", "pw1"],
     ["/usr/bin/redis-cli", "-p", "6379", "-a", R]),
    (["psql", "-p", "5432", "-h", "db"], ["psql", "-p", "5432", "-h", "db"]),
    (["curl", "-u", "alice:pw1", "https://h"], ["curl", "-u", f"alice:{R}", "https://h"]),
    (["curl", "--user=bob:pw1", "-ucarol:pw2"], ["curl", f"--user=bob:{R}", f"-ucarol:{R}"]),
    (["curl", "-u", "dave", "https://h"], ["curl", "-u", "dave", "https://h"]),  # asks for it
    (["curl", "-H", "X-Api-Key: pw1", "-H", "PRIVATE-TOKEN: pw2", "-H", "Accept: text/csv"],
     ["curl", "-H", f"X-Api-Key: {R}", "-H", f"PRIVATE-TOKEN: {R}", "-H", "Accept: text/csv"]),
    (["curl", "-d", '{"password":"pw1","user":"u"}', "--config", '{"db": {"token": "pw2"}}'],
     ["curl", "-d", f'{{"password":"{R}","user":"u"}}',
      "--config", f'{{"db": {{"token": "{R}"}}}}']),
    (["git", "clone", "https://ghp_pw1gittoken@github.com/o/r.git", "https://git@h/r.git"],
     ["git", "clone", f"https://{R}@github.com/o/r.git", "https://git@h/r.git"]),
    (["java", "-Dspring.datasource.password=pw1", "-Dspring.profiles.active=prod", "-jar", "a"],
     ["java", f"-Dspring.datasource.password={R}", "-Dspring.profiles.active=prod", "-jar", "a"]),
    (["spark-submit", "--conf", "spark.hadoop.fs.s3a.secret.key=pw1", "--conf", "spark.x=1"],
     ["spark-submit", "--conf", f"spark.hadoop.fs.s3a.secret.key={R}", "--conf", "spark.x=1"]),
    (["aws", "configure", "set", "aws_secret_access_key", "pw1"],
     ["aws", "configure", "set", "aws_secret_access_key", R]),
    (["gh", "secret", "set", "DEPLOY", "-b", "pw1"], ["gh", "secret", "set", "DEPLOY", "-b", R]),
    (["train", "--tokenizer-path", "t.json", "--max-tokens", "512", "--primary-key", "id",
      "--author", "ann", "--use-auth", "data/input.csv", "--auth", "pw1"],
     ["train", "--tokenizer-path", "t.json", "--max-tokens", "512", "--primary-key", "id",
      "--author", "ann", "--use-auth", "data/input.csv", "--auth", R]),
    (["tool", "--cert", "/etc/ssl/c.pem", "--token-file", "/run/t", "--token", "/pw1"],
     ["tool", "--cert", "/etc/ssl/c.pem", "--token-file", "/run/t", "--token", R]),
])  # fmt: skip
def test_secrets_of_well_known_tools_and_forms_are_masked_in_arguments(args, shown):
    assert redacted_args(args) == shown



@pytest.mark.parametrize("value, shown", [
    ('{"db": {"user": "u", "password": "pw1"}}', f'{{"db": {{"user": "u", "password": "{R}"}}}}'),
    ("host=db user=u password=pw1 dbname=x", f"host=db user=u password={R} dbname=x"),
    ('org.apache.kafka.PlainLoginModule required username="u" password="pw1";',
     f'org.apache.kafka.PlainLoginModule required username="u" password="{R}";'),
    ("https://ghp_pw1repotoken@github.com/o/r.git", f"https://{R}@github.com/o/r.git"),
    ("https://hooks.slack.com/services/T000/B000/pw1slackhook",
     f"https://hooks.slack.com/services/{R}"),
    ("-Xmx1g -Dspring.datasource.password=pw1", f"-Xmx1g -Dspring.datasource.password={R}"),
    ("postgresql://u:ab/cd+pw1@h/db", f"postgresql://u:{R}@h/db"),
    ("redis://:p#ss_pw1@h:6379", f"redis://:{R}@h:6379"),
    ("https://h:8443/a@b?page=2", "https://h:8443/a@b?page=2"),  # an '@' in the path
    ("http://example.com/a@b#x", "http://example.com/a@b#x"),
    ("user@host:/srv ssh://git@h/r alice@b.com", "user@host:/srv ssh://git@h/r alice@b.com"),
])  # fmt: skip
def test_secrets_inside_captured_values_are_masked(value, shown):
    captured = captured_environment("V", environ={"V": value})
    assert captured["process.environment_variable.V"] == shown


@pytest.mark.parametrize("name, value, shown", [
    ("GOOGLE_APPLICATION_CREDENTIALS", "/var/run/gcp/key.json", "/var/run/gcp/key.json"),
    ("SSL_CERT_FILE", "/etc/ssl/certs/ca.pem", "/etc/ssl/certs/ca.pem"),
    ("GOOGLE_APPLICATION_CREDENTIALS", '{"private_key": "pw1"}', R),
    ("DB_PASSWORD", "/pw1/x", R),  # a password starting with '/' is no file
    ("TOKENIZER_PATH", "tok.json", "tok.json"),
    ("AUTHOR_NAME", "Ann", "Ann"),
    ("SESSION_DATE", "2024-05-01", "2024-05-01"),
    ("KEYBOARD", "us", "us"),
    ("AUTH0_DOMAIN", "x.auth0.com", "x.auth0.com"),
])  # fmt: skip
def test_paths_to_credential_files_and_harmless_names_are_shown(name, value, shown):
    assert captured_environment(name, environ={name: value})[ENV_ATTRIBUTE_PREFIX + name] == shown


def test_quoted_values_and_tools_inside_a_script_are_masked_whole():
    script = ("export PGPASSWORD='pw1 with space' TOKEN=\"pw2 x\"; sshpass -p pw3 ssh -p 22 h;"
              " mysql -uroot -ppw4 db; curl -u alice:pw5 -H 'X-Api-Key: pw6' https://h;"
              " redis-cli -p 6379 -a pw7 ping; docker login -u a -p pw8 r.io; docker run -p 80:80 i"
              )  # fmt: skip
    [masked] = redacted_args([script])
    assert masked == (
        f"export PGPASSWORD='{R}' TOKEN=\"{R}\"; sshpass -p {R} ssh -p 22 h;"
        f" mysql -uroot -p{R} db; curl -u alice:{R} -H 'X-Api-Key: {R}' https://h;"
        f" redis-cli -p 6379 -a {R} ping; docker login -u a -p {R} r.io; docker run -p 80:80 i"
    )


def test_text_keeps_its_message_and_masks_only_the_secrets():
    text = ("psycopg2.OperationalError: connection to postgresql://app:pw1@db/app failed: FATAL:"
            "  password authentication failed for user \"app\"\n"
            "KeyError: 'DB_PASSWORD'\nbasic authentication failed\n"
            "+ curl -sf -H 'Authorization: Bearer pw2_deploy_token'\n")
    assert redacted_text(text) == (
        f"psycopg2.OperationalError: connection to postgresql://app:{R}@db/app failed: FATAL:"
        "  password authentication failed for user \"app\"\n"
        "KeyError: 'DB_PASSWORD'\nbasic authentication failed\n"
        f"+ curl -sf -H 'Authorization: Bearer {R}'\n"
    )
