# PAGI::Simple's $c over real sockets: request data (headers, multi-valued
# query and form params, multipart uploads spooled to files, cookies), the
# response helpers (text/html/json with UTF-8, status, headers, cookies,
# redirect), send_file (ETag, Last-Modified, Range, If-None-Match,
# If-Modified-Since), streaming, stash, errors (development and production
# 500 pages, $c->error, custom error handlers, malformed JSON 400, 413).
use strict;
use warnings;
use utf8;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(loop stop_server);
use PAGI::Test::Simple qw(serve request);
use Future::AsyncAwait;
use File::Temp ();
use Encode ();
use PAGI::Simple;

my $dir = File::Temp->newdir;
my $file = "$dir/data.txt";
{ open my $fh, '>:raw', $file or die $!; print {$fh} join('', 'a' .. 'z'); close $fh }
utime 1_700_000_000, 1_700_000_000, $file;

my %seen;
my @warnings;
$SIG{__WARN__} = sub { push @warnings, @_ };
my $app = PAGI::Simple->new(name => 'ctx', max_body_size => 1000, max_upload_size => 5000);
$app->get('/req' => sub ($c) {
    my $req = $c->req;
    $c->json({
        method => $req->method, path => $req->path, ua => $req->header('USER-AGENT'),
        tags => $c->query_params('tag'), tag => $c->param('tag'), q => $req->query_param('q'),
        cookies => $req->cookies, one_cookie => $c->cookie('b'),
        multi => [ $req->header('x-multi') ],
    });
});
$app->post('/form/:id' => sub ($c) {
    my $p = $c->params;
    $c->json({ colors => $c->req->form_params('color'), name => $c->param('name'), id => $c->param('id'),
               merged => [ $p->get_all('name') ] });
});
$app->post('/upload' => sub ($c) {
    my $u = $c->upload('doc');
    $seen{temp} = $u->path;
    $c->json({ filename => $u->filename, size => $u->size, type => $u->content_type, content => $u->slurp,
               title => $c->param('title'), on_disk => (-f $u->path ? 1 : 0) });
});
$app->get('/text' => sub ($c) { $c->text('héllo ☺') });
$app->get('/html' => sub ($c) { $c->html('<p>é</p>', 201) });
$app->get('/json' => sub ($c) { $c->status(202)->json({ b => 1, a => 'ü' }) });
$app->get('/headers' => sub ($c) {
    $c->header('X-One' => 'a')->header('x-one' => 'b')->res_header('X-Two' => 1)->res_header('X-Two' => 2)
      ->cookie(sid => 'abc', path => '/', httponly => 1, samesite => 'Lax')->cookie(theme => 'dark');
    $c->text('ok');
});
$app->get('/go' => sub ($c) { $c->redirect('/elsewhere') });
$app->get('/moved' => sub ($c) { $c->redirect('/new', 301) });
$app->get('/file' => sub ($c) { $c->send_file($file) });
$app->get('/missing-file' => sub ($c) { $c->send_file("$dir/nope") });
$app->get('/stream' => sub ($c) {
    $c->stream(async sub ($w) {
        for my $i (1 .. 3) { await $w->write("part $i\n"); await loop()->delay_future(after => 0.01) }
    }, content_type => 'text/plain');
});
$app->get('/stash' => [ sub ($c, $next) { $c->stash->{user} = 'ann'; $next->() } ], sub ($c) { $c->text($c->stash->{user}) });
$app->get('/boom' => sub ($c) { die "kaboom <script>\n" });
$app->get('/async-boom' => async sub ($c) { await loop()->delay_future(after => 0.01); die "late kaboom\n" });
$app->get('/e404' => sub ($c) { $c->error(404) });
$app->get('/e400' => sub ($c) { $c->error(400, 'name is required') });
$app->get('/e418' => sub ($c) { $c->error(418, 'teapot') });
$app->get('/nothing' => sub ($c) { 1 });
$app->post('/json-in' => sub ($c) { $c->json({ got => $c->json_body }) });
$app->error(418 => sub ($c, $msg) { $c->json({ error => $msg }, 418) });

my $dev = PAGI::Simple->new(name => 'dev app', mode => 'development');
$dev->get('/boom' => sub ($c) { die "dev kaboom <b>\n" });

my ($server, $port) = serve($app);
my ($dserver, $dport) = serve($dev);

my $r = request($port, 'GET', '/req?tag=a&tag=b&q=caf%C3%A9+au+lait;x=1', headers => [
    [ 'User-Agent', 'tester/1' ], [ 'Cookie', 'a=1; b=two%20words' ], [ 'X-Multi', 'one' ], [ 'X-Multi', 'two' ] ]);
is(Encode::decode('UTF-8', $r->{body}), '{"cookies":{"a":"1","b":"two words"},"method":"GET","multi":["one","two"],"one_cookie":"two words",'
    . '"path":"/req","q":"café au lait","tag":"b","tags":["a","b"],"ua":"tester/1"}', 'request accessors');

$r = request($port, 'POST', '/form/9?name=fromquery', body => 'color=red&color=blue&name=ann',
    headers => [ [ 'Content-Type', 'application/x-www-form-urlencoded' ] ]);
is($r->{body}, '{"colors":["red","blue"],"id":"9","merged":["ann","fromquery"],"name":"fromquery"}',
    'form params: multi-valued; param() prefers path, then query, then form');

my $boundary = 'XyZ123';
my $mp = join "\r\n", "--$boundary", 'Content-Disposition: form-data; name="title"', '', 'Report',
    "--$boundary", 'Content-Disposition: form-data; name="doc"; filename="r.txt"', 'Content-Type: text/plain', '',
    "line1\nline2", "--$boundary--", '';
$r = request($port, 'POST', '/upload', body => $mp, headers => [ [ 'Content-Type', "multipart/form-data; boundary=$boundary" ] ]);
is($r->{body}, '{"content":"line1\nline2","filename":"r.txt","on_disk":1,"size":11,"title":"Report","type":"text/plain"}',
    'multipart upload spooled to a file');
ok(!-e $seen{temp}, 'the spooled file is gone after the request');
$r = request($port, 'POST', '/upload', body => $mp . ('x' x 6000), headers => [ [ 'Content-Type', "multipart/form-data; boundary=$boundary" ] ]);
is("$r->{status} $r->{body}", '413 Payload Too Large', 'an upload over max_upload_size is 413');
$r = request($port, 'POST', '/json-in', body => '{"a":"' . ('x' x 2000) . '"}', headers => [ [ 'Content-Type', 'application/json' ] ]);
is($r->{status}, 413, 'a JSON body over max_body_size is 413');
$r = request($port, 'POST', '/json-in', body => '{"a": [1, 2}', headers => [ [ 'Content-Type', 'application/json' ] ]);
is($r->{status}, 400, 'malformed JSON is 400');
like($r->{body}, qr/^Bad Request: Malformed JSON in request body: .*offset/, 'saying where');
$r = request($port, 'POST', '/json-in', body => Encode::encode('UTF-8', '{"name":"Zoë"}'), headers => [ [ 'Content-Type', 'application/json' ] ]);
is(Encode::decode('UTF-8', $r->{body}), '{"got":{"name":"Zoë"}}', 'JSON in and out as UTF-8');

$r = request($port, 'GET', '/text');
is($r->{header}{'content-type'}, 'text/plain; charset=utf-8', 'text content type');
is($r->{body}, Encode::encode('UTF-8', 'héllo ☺'), 'text is UTF-8-encoded');
is($r->{header}{'content-length'}, length(Encode::encode('UTF-8', 'héllo ☺')), 'content-length counts bytes');
$r = request($port, 'GET', '/html');
is("$r->{status} $r->{header}{'content-type'}", '201 text/html; charset=utf-8', 'html with a status');
$r = request($port, 'GET', '/json');
is("$r->{status} $r->{body}", '202 ' . Encode::encode('UTF-8', '{"a":"ü","b":1}'), 'json: canonical keys, UTF-8');

$r = request($port, 'GET', '/headers');
is($r->{all_headers}->('x-one')->[0], 'b', 'header() replaces');
is(scalar @{ $r->{all_headers}->('x-one') }, 1, 'so there is one');
is(join(',', @{ $r->{all_headers}->('x-two') }), '1,2', 'res_header() adds');
is(join(' | ', @{ $r->{all_headers}->('set-cookie') }), 'sid=abc; path=/; SameSite=Lax; HttpOnly | theme=dark', 'cookies');

$r = request($port, 'GET', '/go');
is("$r->{status} $r->{header}{location}", '302 /elsewhere', 'redirect defaults to 302');
$r = request($port, 'GET', '/moved');
is("$r->{status} $r->{header}{location}", '301 /new', 'redirect with a status');

$r = request($port, 'GET', '/file');
is("$r->{status} $r->{body}", '200 ' . join('', 'a' .. 'z'), 'send_file');
my $etag = $r->{header}{etag};
like($etag, qr/^"[0-9a-f]+-1a"$/, 'with an ETag');
is($r->{header}{'last-modified'}, 'Tue, 14 Nov 2023 22:13:20 GMT', 'and Last-Modified');
is($r->{header}{'content-type'}, 'text/plain; charset=utf-8', 'type from the extension');
is($r->{header}{'accept-ranges'}, 'bytes', 'ranges accepted');
$r = request($port, 'GET', '/file', headers => [ [ 'If-None-Match', qq{"zzz", $etag} ] ]);
is("$r->{status} $r->{body}", '304 ', 'If-None-Match hit is 304 without body');
$r = request($port, 'GET', '/file', headers => [ [ 'If-None-Match', '"other"' ], [ 'If-Modified-Since', 'Tue, 14 Nov 2023 22:13:20 GMT' ] ]);
is($r->{status}, 200, 'If-None-Match miss wins over If-Modified-Since');
$r = request($port, 'GET', '/file', headers => [ [ 'If-Modified-Since', 'Wed, 15 Nov 2023 00:00:00 GMT' ] ]);
is($r->{status}, 304, 'If-Modified-Since not older than the file is 304');
$r = request($port, 'GET', '/file', headers => [ [ 'Range', 'bytes=2-4' ] ]);
is("$r->{status} $r->{body} $r->{header}{'content-range'}", '206 cde bytes 2-4/26', 'Range a-b');
$r = request($port, 'GET', '/file', headers => [ [ 'Range', 'bytes=-3' ] ]);
is("$r->{status} $r->{body}", '206 xyz', 'suffix Range');
$r = request($port, 'GET', '/file', headers => [ [ 'Range', 'bytes=24-' ] ]);
is("$r->{status} $r->{body}", '206 yz', 'open Range');
$r = request($port, 'GET', '/file', headers => [ [ 'Range', 'bytes=30-40' ] ]);
is("$r->{status} $r->{header}{'content-range'}", '416 bytes */26', 'unsatisfiable Range is 416');
$r = request($port, 'GET', '/file', headers => [ [ 'Range', 'bytes=0-1' ], [ 'If-Range', '"stale"' ] ]);
is($r->{status}, 200, 'If-Range with another ETag serves the whole file');
$r = request($port, 'HEAD', '/file');
is("$r->{status} $r->{header}{'content-length'}", '200 26', 'HEAD of a file');
$r = request($port, 'GET', '/missing-file');
is($r->{status}, 404, 'send_file of a missing file is 404');

$r = request($port, 'GET', '/stream');
ok($r->{chunked}, 'stream is chunked');
is($r->{body}, "part 1\npart 2\npart 3\n", 'all parts arrive');
$r = request($port, 'GET', '/stash');
is($r->{body}, 'ann', 'stash is shared by middleware and handler');

$r = request($port, 'GET', '/boom');
is("$r->{status} $r->{body}", '500 Internal Server Error', 'production 500 is short');
$r = request($port, 'GET', '/async-boom');
is($r->{status}, 500, 'an async handler failing is a 500 too');
$r = request($dport, 'GET', '/boom');
is($r->{status}, 500, 'development 500');
like($r->{body}, qr{<pre>dev kaboom &#60;b&#62;\n</pre>}, 'shows the error, escaped');
like($r->{body}, qr{<code>GET /boom</code>}, 'and the request');
$r = request($port, 'GET', '/e404');
is("$r->{status} $r->{body}", '404 Not Found', '$c->error(404)');
$r = request($port, 'GET', '/e400');
is("$r->{status} $r->{body}", '400 Bad Request: name is required', '$c->error(400, message)');
$r = request($port, 'GET', '/e418');
is("$r->{status} $r->{body}", '418 {"error":"teapot"}', 'custom error handler');
$r = request($port, 'GET', '/nothing');
is($r->{status}, 500, 'a handler that sends nothing gets a 500, not a hang');

like(join('', @warnings), qr/error in ctx handling GET \/boom: kaboom/, 'the 500 is logged with the request');
stop_server($server);
stop_server($dserver);
done_testing;
