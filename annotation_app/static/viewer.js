// Zoom (wheel, buttons, + - 0 keys) and pan (drag) of the task image; reports clicks in image coordinates.

export class Viewer {
  constructor(root) {
    this.root = root;
    this.stage = root.querySelector(".stage");
    this.img = root.querySelector("img");
    this.scale = 1; this.x = 0; this.y = 0; this.minScale = 0.05;
    this.clickHandlers = [];
    const ready = () => this.fit();
    if (this.img.complete && this.img.naturalWidth) ready(); else this.img.addEventListener("load", ready);
    new ResizeObserver(() => this.fit()).observe(root);
    root.addEventListener("wheel", (e) => this.onWheel(e), { passive: false });
    root.addEventListener("pointerdown", (e) => this.onDown(e));
    root.querySelectorAll("[data-zoom]").forEach((b) => b.addEventListener("click", (e) => {
      e.stopPropagation();
      const how = b.dataset.zoom;
      if (how === "fit") this.fit(); else this.zoomAt(how === "in" ? 1.25 : 0.8);
    }));
    root.querySelector(".tools")?.addEventListener("pointerdown", (e) => e.stopPropagation());
    addEventListener("keydown", (e) => {
      if (e.target.tagName === "INPUT" || e.target.tagName === "TEXTAREA") return;
      if (e.key === "+" || e.key === "=") this.zoomAt(1.25);
      else if (e.key === "-") this.zoomAt(0.8);
      else if (e.key === "0") this.fit();
    });
  }

  get width() { return this.img.naturalWidth || this.img.width; }
  get height() { return this.img.naturalHeight || this.img.height; }

  fit() {
    const r = this.root.getBoundingClientRect();
    if (!r.width || !this.width) return;
    this.scale = Math.min(r.width / this.width, r.height / this.height);
    this.x = (r.width - this.width * this.scale) / 2;
    this.y = (r.height - this.height * this.scale) / 2;
    this.apply();
  }

  apply() {
    this.stage.style.width = `${this.width}px`;
    this.stage.style.height = `${this.height}px`;
    this.stage.style.transform = `translate(${this.x}px, ${this.y}px) scale(${this.scale})`;
    this.stage.querySelectorAll(".marker").forEach((m) => { m.style.transform = `scale(${1 / this.scale})`; });
  }

  zoomAt(factor, cx, cy) {
    const r = this.root.getBoundingClientRect();
    cx ??= r.width / 2; cy ??= r.height / 2;
    const s = Math.min(40, Math.max(this.minScale, this.scale * factor));
    this.x = cx - ((cx - this.x) * s) / this.scale;
    this.y = cy - ((cy - this.y) * s) / this.scale;
    this.scale = s;
    this.apply();
  }

  onWheel(e) {
    e.preventDefault();
    if (!e.deltaY) return; // a sideways scroll is no zoom
    // by how far the wheel turned: a trackpad sends many small deltas (a fixed step per event
    // threw the zoom to its limits), a mouse notch about 100 pixels or 3 lines
    const pixels = e.deltaY * (e.deltaMode === 1 ? 33 : e.deltaMode === 2 ? 400 : 1);
    const factor = Math.min(1.5, Math.max(1 / 1.5, Math.exp(-pixels * 0.0014)));
    const r = this.root.getBoundingClientRect();
    this.zoomAt(factor, e.clientX - r.left, e.clientY - r.top);
  }

  onDown(e) {
    if (e.button !== 0) return;
    const start = { x: e.clientX, y: e.clientY, ox: this.x, oy: this.y };
    let dragged = false;
    const target = e.target;
    const move = (ev) => {
      const dx = ev.clientX - start.x, dy = ev.clientY - start.y;
      if (!dragged && Math.hypot(dx, dy) > 4) dragged = true;
      if (dragged) { this.x = start.ox + dx; this.y = start.oy + dy; this.apply(); }
    };
    const up = (ev) => {
      removeEventListener("pointermove", move); removeEventListener("pointerup", up);
      if (!dragged) this.click(ev, target);
    };
    addEventListener("pointermove", move); addEventListener("pointerup", up);
  }

  click(ev, target) {
    if (this.disabled) return; // an image this browser cannot show as it is (see checkImage)
    const r = this.img.getBoundingClientRect();
    const x = (ev.clientX - r.left) / r.width, y = (ev.clientY - r.top) / r.height;
    for (const h of this.clickHandlers) h({ x, y, inside: x >= 0 && x <= 1 && y >= 0 && y <= 1, target });
  }

  onClick(handler) { this.clickHandlers.push(handler); }
}
