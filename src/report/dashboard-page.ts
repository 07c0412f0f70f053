import { escapeHtml, htmlPage, scriptJson } from "./html.js";

/**
 * The live fleet dashboard (`itera fleet dashboard`): a table of devices that the page's script
 * fills from the server's event stream (`events`, same origin; the page's own CSP allows only that
 * connection). Device strings are written with textContent, never parsed as HTML.
 */
const SCRIPT = `
var cfg=JSON.parse(document.getElementById("cfg").textContent);
var devices={};var tb=document.querySelector("#devices tbody");
function f(x,d){return x===null||x===undefined?"\\u2013":Number(x).toFixed(d);}
function ago(ms){if(!ms)return "\\u2013";var s=Math.max(0,Math.round((Date.now()-ms)/1000));return s+" s ago";}
function render(){var ids=Object.keys(devices).sort();tb.textContent="";ids.forEach(function(id){var d=devices[id];var tr=document.createElement("tr");tr.dataset.device=d.device;tr.className="state-"+d.state;
[d.device,d.state,d.version||"\\u2013",d.profile||"\\u2013",ago(d.last_seen_ms),f(d.temp_c,1),f(d.tok_s,2),d.mj_per_token===null?"\\u2013":f(d.mj_per_token,2)+(d.method?" ("+d.method+")":"")].forEach(function(v,i){var td=document.createElement("td");td.textContent=v;if(i>=5&&i<=7)td.className="n";tr.appendChild(td);});tb.appendChild(tr);});
document.getElementById("count").textContent=String(ids.length);}
var q=location.search;var es=new EventSource("events"+q);
es.addEventListener("snapshot",function(e){devices={};JSON.parse(e.data).forEach(function(d){devices[d.device]=d;});render();document.getElementById("conn").textContent="live";});
es.addEventListener("device",function(e){var d=JSON.parse(e.data);devices[d.device]=d;render();});
es.onerror=function(){document.getElementById("conn").textContent="reconnecting";};
setInterval(render,5000);
`;

export function dashboardPage(o: { fleet: string }): string {
  const title = `Fleet ${o.fleet}: live dashboard`;
  const body = [
    `<h1>${escapeHtml(title)}</h1>`,
    '<p class="muted"><span id="count">0</span> device(s); stream: <span id="conn">connecting</span></p>',
    '<table id="devices"><thead><tr><th>device</th><th>state</th><th>version</th><th>profile</th><th>last seen</th><th>temp °C</th><th>recent tokens/s</th><th>mJ/token</th></tr></thead><tbody></tbody></table>',
    `<script type="application/json" id="cfg">${scriptJson({ fleet: o.fleet })}</script>`,
  ].join("\n");
  return htmlPage({ title, body, script: SCRIPT, connect: "'self'" });
}
