// The traffic chart of the dashboard's overview: per user, bytes per second (both ways) for
// each minute of the last hour, from the JSON the page carries. No inline script: the page's
// Content-Security-Policy allows scripts from this server only.
"use strict";
(function () {
  const source = document.getElementById("traffic-data");
  const canvas = document.getElementById("traffic");
  if (!source || !canvas || typeof Chart === "undefined") {
    return;
  }
  const data = JSON.parse(source.textContent);
  const colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
  new Chart(canvas, {
    type: "line",
    data: {
      labels: data.labels,
      datasets: data.series.map(function (series, index) {
        const color = colors[index % colors.length];
        return {
          label: series.user,
          data: series.values,
          borderColor: color,
          backgroundColor: color,
          borderWidth: 3,
          pointRadius: 0,
          tension: 0.2,
        };
      }),
    },
    options: {
      animation: false,
      responsive: false,
      interaction: { mode: "index", intersect: false },
      scales: {
        y: { beginAtZero: true, title: { display: true, text: "bytes/s (up + down)" } },
        x: { ticks: { maxTicksLimit: 12 } },
      },
    },
  });
  document.body.dataset.chart = "rendered";
})();
