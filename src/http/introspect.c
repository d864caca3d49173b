/* braid_http_introspection_route: the loop's introspection document
 * (<braid/introspect.h>) as JSON at PATH.json and as a self-contained page
 * at PATH (inline style and script, no external assets) that fetches the
 * JSON, renders each section as a table (a member that is an array of
 * objects — a tuple space's clients, a database's connections — as a table
 * inside its cell) and draws the entries of "stages" and "components" that
 * have "links" as an SVG graph. */
#include "http_internal.h"
#include "server_internal.h"
#include <braid/introspect.h>
#include <string.h>

static const char page[] =
    "<!doctype html><html><head><meta charset=\"utf-8\"><title>braid</title><style>"
    "body{font:13px/1.4 system-ui,sans-serif;margin:1em;color:#222}"
    "h2{font-size:15px;margin:1.2em 0 .3em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}"
    "th{background:#f2f2f2}td table{font-size:12px}td td,td th{padding:1px 4px}"
    "#err{color:#b00}svg text{font:12px sans-serif}"
    "</style></head><body><h1 style=\"font-size:18px\">braid: live state</h1>"
    "<div id=\"err\"></div><div id=\"out\"></div>"
    "<p><a id=\"raw\" href=\"\">JSON</a> &middot; refreshed every 2 s</p><script>\n"
    "'use strict';\n"
    "const url=location.pathname.replace(/\\/$/,'')+'.json';\n"
    "document.getElementById('raw').href=url;\n"
    "function esc(s){return String(s).replace(/[&<>\"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','\"':'&quot;'}[c]));}\n"
    "function cell(v){if(v===null||v===undefined)return '';"
    "if(Array.isArray(v))return v.some(x=>typeof x==='object'&&x!==null&&!Array.isArray(x))?"
    "table(v.map(x=>typeof x==='object'&&x!==null?x:{value:x})):esc(v.map(x=>typeof x==='object'?JSON.stringify(x):x).join(', '));"
    "if(typeof v==='object')return Object.keys(v).map(k=>esc(k)+': '+cell(v[k])).join('<br>');return esc(v);}\n"
    "function table(rows){if(!rows.length)return '<p>(none)</p>';const keys=[];"
    "rows.forEach(r=>Object.keys(r).forEach(k=>{if(!keys.includes(k))keys.push(k);}));"
    "return '<table><tr>'+keys.map(k=>'<th>'+esc(k)+'</th>').join('')+'</tr>'+"
    "rows.map(r=>'<tr>'+keys.map(k=>'<td>'+cell(r[k])+'</td>').join('')+'</tr>').join('')+'</table>';}\n"
    "function graph(nodes){const n=nodes.filter(x=>x&&x.name!==undefined&&Array.isArray(x.links));"
    "if(!n.length)return '';const W=760,R=Math.max(120,40*n.length),H=2*R+80,cx=W/2,cy=H/2,pos={};"
    "n.forEach((x,i)=>{const a=2*Math.PI*i/n.length-Math.PI/2;pos[x.name]=[cx+R*Math.cos(a),cy+R*Math.sin(a)];});"
    "let s='<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"'+W+'\" height=\"'+H+'\">"
    "<defs><marker id=\"ar\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"8\" markerHeight=\"8\" orient=\"auto\">"
    "<path d=\"M0,0L10,5L0,10z\" fill=\"#555\"/></marker></defs>';\n"
    "n.forEach(x=>x.links.forEach(t=>{const a=pos[x.name],b=pos[t];if(!b)return;"
    "const dx=b[0]-a[0],dy=b[1]-a[1],d=Math.hypot(dx,dy)||1,k=(d-34)/d;"
    "s+='<line x1=\"'+a[0]+'\" y1=\"'+a[1]+'\" x2=\"'+(a[0]+dx*k)+'\" y2=\"'+(a[1]+dy*k)+'\" stroke=\"#555\" marker-end=\"url(#ar)\"/>';}));\n"
    "n.forEach(x=>{const p=pos[x.name];s+='<ellipse cx=\"'+p[0]+'\" cy=\"'+p[1]+'\" rx=\"34\" ry=\"20\" fill=\"#e8f0fe\" stroke=\"#4a6fa5\"/>'+"
    "'<text x=\"'+p[0]+'\" y=\"'+(p[1]+4)+'\" text-anchor=\"middle\">'+esc(x.name)+'</text>';});return s+'</svg>';}\n"
    "function render(doc){let h='';if(doc.loop){const l=Object.assign({},doc.loop);const hd=l.handles;delete l.handles;"
    "h+='<h2>loop</h2>'+table([l])+'<h2>handles by kind</h2>'+table([hd||{}]);}\n"
    "Object.keys(doc).forEach(k=>{if(!Array.isArray(doc[k]))return;h+='<h2>'+esc(k)+' ('+doc[k].length+')</h2>';"
    "if(k==='stages'||k==='components')h+=graph(doc[k]);"
    "h+=table(doc[k].map(x=>typeof x==='object'&&x!==null?x:{value:x}));});\n"
    "document.getElementById('out').innerHTML=h;}\n"
    "function load(){fetch(url).then(r=>r.json()).then(d=>{document.getElementById('err').textContent='';render(d);})"
    ".catch(e=>{document.getElementById('err').textContent='cannot load '+url+': '+e;});}\n"
    "load();setInterval(load,2000);\n"
    "</script></body></html>\n";

static braid_deferred *serve_page(braid_http_request *req, void *arg) {
    BRAID__UNUSED(arg);
    braid_http_request_add_header(req, "Cache-Control", "no-store");
    braid_http_request_respond(req, 200, "text/html; charset=utf-8", page, sizeof page - 1);
    return NULL;
}

static braid_deferred *serve_json(braid_http_request *req, void *arg) {
    BRAID__UNUSED(arg);
    char *json;
    size_t len;
    int rc = braid_introspect_json(req->server->loop, &json, &len);
    if (rc < 0) {
        braid_http_request_respond(req, 503, "text/plain", "out of memory\n", 14);
        return NULL;
    }
    braid_http_request_add_header(req, "Cache-Control", "no-store");
    braid_http_request_respond(req, 200, "application/json", json, len);
    braid_free(json);
    return NULL;
}

int braid_http_introspection_route(braid_http_server *s, const char *path) {
    if (!s || !path || path[0] != '/') return BRAID_EINVAL;
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;          /* "/_braid/" serves at "/_braid" */
    if (n > 1000) return BRAID_EINVAL;
    char html[1024], json[1032];
    memcpy(html, path, n);
    html[n] = 0;
    memcpy(json, path, n);
    memcpy(json + n, ".json", 6);
    int rc = braid_http_server_route(s, "GET", json, 0, serve_json, NULL);
    if (rc < 0) return rc;
    return braid_http_server_route(s, "GET", html, 0, serve_page, NULL);
}
