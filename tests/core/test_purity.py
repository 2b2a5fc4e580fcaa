import subprocess
import sys
import textwrap


def test_core_imports_with_no_io_or_torch_available() -> None:
    # Make the heavy and I/O modules unimportable, then import all of core.
    code = textwrap.dedent(
        """
        import sys
        for name in ("asyncio", "torch", "numpy", "starlette", "uvicorn", "websockets",
                     "aiortc", "diffusers", "transformers", "socket", "threading", "time"):
            sys.modules[name] = None
        import promptcast.core.messages, promptcast.core.session
        import promptcast.core.scheduler, promptcast.core.outbox, promptcast.core.limits
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
