"""PASS/FAIL/SKIP lines and the closing "N passed, N failed" line of the deployment tests."""


class Failure(Exception):
    """A check failed in a way that stops the run. `reported`: its FAIL line
    is already printed."""

    def __init__(self, message, reported=False):
        super().__init__(message)
        self.reported = reported


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"PASS  {name}" + (f"  ({detail})" if detail else ""), flush=True)
        else:
            self.failed += 1
            print(f"FAIL  {name}" + (f": {detail}" if detail else ""), flush=True)
        return ok

    def require(self, name, ok, detail=""):
        """check(), and stop the run if it failed."""
        if not self.check(name, ok, detail):
            raise Failure(name, reported=True)

    def skip(self, name, why):
        """A check that could not run (a tool is missing): said, never silent."""
        self.skipped += 1
        print(f"SKIP  {name}: {why}", flush=True)

    def summary(self, prefix):
        line = f"{prefix}: {self.passed} passed, {self.failed} failed"
        if self.skipped:
            line += f", {self.skipped} skipped"
        print(line, flush=True)
        return 1 if self.failed else 0
