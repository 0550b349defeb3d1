from helpers import assert_user_error, run_cli


def test_help_lists_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("tasks", "data", "models", "prepare"):
        assert command in proc.stdout


def test_usage_errors_are_one_line_exit_2():
    assert_user_error(run_cli("bogus"), "No such command")
    assert_user_error(run_cli("data", "check", "--nope", "x"), "--nope")


def test_models_command_shows_dtype():
    proc = run_cli("models")
    assert proc.returncode == 0
    assert "SmolLM2-135M-Instruct" in proc.stdout and "dtype:" in proc.stdout
