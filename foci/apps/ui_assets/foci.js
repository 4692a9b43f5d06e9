// Foci web UI: Ctrl/Cmd/Alt+Enter starts a generation, or stops the running one.
() => {
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey || event.altKey)) {
      return;
    }
    const visible = (id) => {
      const button = document.getElementById(id);
      return button && button.offsetParent !== null ? button : null;
    };
    const target = visible("foci-stop") || visible("foci-generate");
    if (target) {
      event.preventDefault();
      target.click();
    }
  });
}
