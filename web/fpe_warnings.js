// Free Prompt Editing: show the pack's warnings on the page, not only in the server console.
// The server sends "free-prompt-editing.warning" ({summary, detail}) when something will change the
// picture (another seed or model than the source's, extra evaluations that reuse the source's).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EVENT = "free-prompt-editing.warning";

function fallbackToast(summary, detail) {
  // ComfyUI without the toast service (its 2024 web UI): a small dismissible box, bottom right.
  let stack = document.getElementById("fpe-warnings");
  if (!stack) {
    stack = document.createElement("div");
    stack.id = "fpe-warnings";
    Object.assign(stack.style, {
      position: "fixed", right: "16px", bottom: "16px", zIndex: 10000, display: "flex",
      flexDirection: "column", gap: "8px", maxWidth: "420px",
    });
    document.body.appendChild(stack);
  }
  const box = document.createElement("div");
  box.className = "fpe-warning";
  box.setAttribute("role", "alert");
  Object.assign(box.style, {
    background: "#3a2f12", color: "#ffe8a3", border: "1px solid #c99a2e", borderRadius: "6px",
    padding: "10px 12px", font: "13px sans-serif", boxShadow: "0 2px 8px rgba(0,0,0,.4)", cursor: "pointer",
  });
  const title = document.createElement("div");
  title.style.fontWeight = "bold";
  title.textContent = summary;
  const body = document.createElement("div");
  body.textContent = detail;
  box.append(title, body);
  box.title = "Click to close";
  box.addEventListener("click", () => box.remove());
  stack.appendChild(box);
  setTimeout(() => box.remove(), 60000);
}

app.registerExtension({
  name: "free-prompt-editing.warnings",
  setup() {
    api.addEventListener(EVENT, ({ detail }) => {
      const summary = detail?.summary ?? "Free Prompt Editing";
      const text = detail?.detail ?? "";
      const toast = app.extensionManager?.toast;
      if (toast?.add) {
        toast.add({ severity: "warn", summary, detail: text, life: 60000 });
      } else {
        fallbackToast(summary, text);
      }
    });
  },
});
