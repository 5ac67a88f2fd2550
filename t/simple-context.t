# PAGI::Simple's $c, in process through PAGI::Test::Client: request data
# (method, path, headers, multi-valued query and form params, multipart
# uploads spooled to files, cookies, connection info), the response helpers
# (text/html/json with UTF-8, status, headers, cookies kept by a client,
# redirect), send_file (ETag, Last-Modified, Range, If-Range, If-None-Match,
# If-Modified-Since), streaming, stash, errors (development and production
# 500 pages, $c->error, custom error handlers, malformed JSON 400, 413).
# Server framing (chunked streams, HEAD of a file, 413 on the wire) is
# checked end to end over a real socket at the end.
use strict;
use warnings;
use utf8;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(stop_server);
use PAGI::Test::Simple qw(client serve request);
use Future::AsyncAwait;
use IO::Async::Loop;
use File::Temp ();
use Encode ();
use PAGI::Simple;

local $SIG{ALRM} = sub { die "simple-context.t: timed out\n" };
alarm 120;

my $loop = IO::Async::Loop->new;
my $dir = File::Temp->newdir;
my $file = "$dir/data.txt";
{ open my $fh, '>:raw', $file or die $!; print {$fh} join('', 'a' .. 'z'); close $fh }
utime 1_700_000_000, 1_700_000_000, $file;
{ open my $fh, '>:raw', "$dir/pic.PNG" or die $!; print {$fh} "\x89PNG"; close $fh }
{ open my $fh, '>:raw', "$dir/blob" or die $!; print {$fh} "?"; close $fh }

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
$app->get('/conn' => sub ($c) {
    my $req = $c->req;
    $c->json({ host => $req->host, server => [ $req->server_name, $req->server_port ],
               client => [ $req->client_ip, $req->client_port ], scheme => $req->scheme, secure => $req->is_secure,
               qs => $c->query_string, user_agent => $req->user_agent });
});
$app->post('/form/:id' => sub ($c) {
    my $p = $c->params;
    $c->json({ colors => $c->req->form_params('color'), name => $c->param('name'), id => $c->param('id'),
               merged => [ $p->get_all('name') ], type => $c->req->content_type, length => $c->req->content_length });
});
$app->post('/text-form' => sub ($c) { $c->json({ city => $c->body_params->get('city'), all => [ $c->body_params->get_all('city') ] }) });
$app->post('/upload' => sub ($c) {
    my $u = $c->upload('doc');
    $seen{temp} = $u->path;
    $c->json({ filename => $u->filename, size => $u->size, type => $u->content_type, content => $u->slurp,
               title => $c->param('title'), on_disk => (-f $u->path ? 1 : 0) });
});
$app->post('/uploads' => sub ($c) {
    my @files = $c->uploads->get_all('f');
    my $copy = "$dir/copied";
    $files[0]->copy_to($copy);
    $c->json({ names => [ map { $_->filename } @files ], sizes => [ map { $_->size } @files ],
               copied => -s $copy, binary => unpack('H*', $files[1]->slurp) });
});
$app->get('/text' => sub ($c) { $c->text('héllo ☺') });
$app->get('/html' => sub ($c) { $c->html('<p>é</p>', 201) });
$app->get('/json' => sub ($c) { $c->status(202)->json({ b => 1, a => 'ü' }) });
$app->get('/headers' => sub ($c) {
    $c->header('X-One' => 'a')->header('x-one' => 'b')->res_header('X-Two' => 1)->res_header('X-Two' => 2)
      ->cookie(sid => 'abc', path => '/', httponly => 1, samesite => 'Lax')->cookie(theme => 'dark');
    $c->text('ok');
});
$app->get('/type' => sub ($c) { $c->content_type('application/x-custom')->text('custom') });
$app->get('/forget' => sub ($c) { $c->cookie(theme => '', path => '/', expires => 1)->text('forgot') });
$app->get('/go' => sub ($c) { $c->redirect('/elsewhere') });
$app->get('/moved' => sub ($c) { $c->redirect('/new', 301) });
$app->get('/see-other' => sub ($c) { $c->redirect('https://example.com/x?y=1', 303) });
$app->get('/file' => sub ($c) { $c->send_file($file) });
$app->get('/file-typed' => sub ($c) { $c->send_file($file, content_type => 'application/x-mine') });
$app->get('/pic' => sub ($c) { $c->send_file("$dir/pic.PNG") });
$app->get('/blob' => sub ($c) { $c->send_file("$dir/blob") });
$app->get('/missing-file' => sub ($c) { $c->send_file("$dir/nope") });
$app->get('/dir-file' => sub ($c) { $c->send_file("$dir") });
$app->get('/stream' => sub ($c) {
    $c->stream(async sub ($w) {
        for my $i (1 .. 3) { await $w->write("part $i\n"); await $loop->delay_future(after => 0.01) }
    }, content_type => 'text/plain');
});
$app->get('/stream-close' => sub ($c) {
    $c->stream(async sub ($w) {
        await $w->write('ü');
        await $w->close;
        $seen{closed} = $w->is_closed;
        $seen{late_write} = eval { $w->write('late'); 1 } ? 'accepted' : 'refused';
    });
});
$app->get('/stream-dies' => sub ($c) {
    $c->stream(async sub ($w) { await $w->write("first\n"); die "mid-stream failure\n" });
});
$app->get('/stash' => [ sub ($c, $next) { $c->stash->{user} = 'ann'; $next->() } ], sub ($c) { $c->text($c->stash->{user}) });
$app->get('/boom' => sub ($c) { die "kaboom <script>\n" });
$app->get('/async-boom' => async sub ($c) { await $loop->delay_future(after => 0.01); die "late kaboom\n" });
$app->get('/e404' => sub ($c) { $c->error(404) });
$app->get('/e400' => sub ($c) { $c->error(400, 'name is required') });
$app->get('/e418' => sub ($c) { $c->error(418, 'teapot') });
$app->get('/abort' => sub ($c) { $c->header('x-lost' => 1)->abort(403, 'not yours') });
$app->get('/nothing' => sub ($c) { 1 });
$app->post('/json-in' => sub ($c) { $c->json({ got => $c->json_body }) });
$app->post('/json-safe' => sub ($c) { $c->json({ got => $c->req->json_body_safe }) });
$app->post('/raw' => { raw_body => 1 }, async sub ($c) {
    my $body = await $c->req->receive_body;
    await $c->text('raw ' . length $body);
});
$app->error(418 => sub ($c, $msg) { $c->json({ error => $msg }, 418) });

my $dev = PAGI::Simple->new(name => 'dev app', mode => 'development');
$dev->get('/boom' => sub ($c) { die "dev kaboom <b>\n" });
$dev->get('/e400' => sub ($c) { $c->error(400, 'still short') });

my $client = client($app, headers => { 'User-Agent' => 'tester/1' });
my $dclient = client($dev);
sub line ($r) { $r->status . ' ' . $r->content }

my $r = $client->get('/req?tag=a&tag=b&q=caf%C3%A9+au+lait;x=1', cookies => { a => 1, b => 'two%20words' },
    headers => [ 'X-Multi' => 'one', 'X-Multi' => 'two' ]);
is($r->text, '{"cookies":{"a":"1","b":"two words"},"method":"GET","multi":["one","two"],"one_cookie":"two words",'
    . '"path":"/req","q":"café au lait","tag":"b","tags":["a","b"],"ua":"tester/1"}', 'request accessors');
$r = $client->get('/conn', query => { z => 'ü' });
is_deeply($r->json, { host => '127.0.0.1:5000', server => [ '127.0.0.1', 5000 ], client => [ '127.0.0.1', 40000 ],
                      scheme => 'http', secure => 0, qs => 'z=%C3%BC', user_agent => 'tester/1' }, 'connection accessors');
$r = client($app, scheme => 'https', server => [ 'example.org', 443 ], client => undef)->get('/conn');
is_deeply($r->json, { host => 'example.org', server => [ 'example.org', 443 ], client => [ undef, undef ],
                      scheme => 'https', secure => 1, qs => '', user_agent => undef }, 'over https, without a client address');

$r = $client->post('/form/9?name=fromquery', form => [ color => 'red', color => 'blue', name => 'ann' ]);
is_deeply($r->json, { colors => [ 'red', 'blue' ], id => 9, length => 29, merged => [ 'ann', 'fromquery' ], name => 'fromquery',
                      type => 'application/x-www-form-urlencoded' }, 'form params: multi-valued; param() prefers path, then query, then form');
$r = $client->post('/text-form', form => [ city => 'Zürich', city => 'Genève' ]);
is_deeply($r->json, { city => 'Genève', all => [ 'Zürich', 'Genève' ] }, 'form values are decoded UTF-8 text; get is the last');
$r = $client->post('/text-form', body => 'city=%ZZ%', headers => { 'Content-Type' => 'application/x-www-form-urlencoded' });
is($r->status, 200, 'a sloppy urlencoded body is still read (as the parser can)');

$r = $client->post('/upload', multipart => [ title => 'Report',
    doc => { filename => 'r.txt', content => "line1\nline2", content_type => 'text/plain' } ]);
is($r->content, '{"content":"line1\nline2","filename":"r.txt","on_disk":1,"size":11,"title":"Report","type":"text/plain"}',
    'multipart upload spooled to a file');
ok($seen{temp} && !-e $seen{temp}, 'the spooled file is gone after the request');
$r = $client->post('/uploads', multipart => [
    f => { filename => 'one.txt', content => 'abc' },
    f => { filename => 'two.bin', content => "\x00\xff\x10", content_type => 'application/octet-stream' } ]);
is_deeply($r->json, { names => [ 'one.txt', 'two.bin' ], sizes => [ 3, 3 ], copied => 3, binary => '00ff10' },
    'several files under one name; binary content intact; copy_to');
$r = $client->post('/upload', multipart => [ title => 'Big', doc => { filename => 'big.txt', content => 'x' x 6000 } ]);
is(line($r), '413 Payload Too Large', 'an upload over max_upload_size is 413');
$r = $client->post('/json-in', json => { a => 'x' x 2000 });
is($r->status, 413, 'a JSON body over max_body_size is 413');
$r = $client->post('/json-in', body => '{"a":"' . ('x' x 995) . '"}', headers => { 'Content-Type' => 'application/json' },
    chunk_size => 100);
is($r->status, 413, 'also when it arrives in pieces');
$r = $client->post('/json-in', body => '{"a": [1, 2}', headers => { 'Content-Type' => 'application/json' });
is($r->status, 400, 'malformed JSON is 400');
like($r->content, qr/^Bad Request: Malformed JSON in request body: .*offset/, 'saying where');
is($r->content_type, 'text/plain', 'as text');
$r = $client->post('/json-safe', body => '{oops', headers => { 'Content-Type' => 'application/json' });
is(line($r), '200 {"got":null}', 'json_body_safe gives undef instead');
$r = $client->post('/json-in', body => Encode::encode('UTF-8', '{"name":"Zoë"}'), headers => { 'Content-Type' => 'application/json' });
is($r->text, '{"got":{"name":"Zoë"}}', 'JSON in and out as UTF-8');
$r = $client->post('/json-in', json => { list => [ 1, 2 ] }, chunk_size => 3);
is($r->content, '{"got":{"list":[1,2]}}', 'a body in many http.request events is read whole before the handler');
$r = $client->post('/json-in');
is($r->content, '{"got":null}', 'an empty body is undef');
$r = $client->post('/raw', body => 'z' x 5000, chunk_size => 1000);
is(line($r), '200 raw 5000', 'raw_body routes read the body themselves, past max_body_size');

$r = $client->get('/text');
is($r->header('content-type'), 'text/plain; charset=utf-8', 'text content type');
is($r->content, Encode::encode('UTF-8', 'héllo ☺'), 'text is UTF-8-encoded');
is($r->header('content-length'), length(Encode::encode('UTF-8', 'héllo ☺')), 'content-length counts bytes');
$r = $client->get('/html');
is($r->status . ' ' . $r->header('content-type'), '201 text/html; charset=utf-8', 'html with a status');
$r = $client->get('/json');
is(line($r), '202 ' . Encode::encode('UTF-8', '{"a":"ü","b":1}'), 'json: canonical keys, UTF-8');
is($r->header('content-type'), 'application/json; charset=utf-8', 'json content type');
$r = $client->get('/type');
is($r->header('content-type') . ' ' . $r->content, 'application/x-custom custom', 'content_type() is kept by text()');

$r = $client->get('/headers');
is_deeply([ $r->header_values('x-one') ], ['b'], 'header() replaces');
is(join(',', $r->header_values('x-two')), '1,2', 'res_header() adds');
is(join(' | ', $r->header_values('set-cookie')), 'sid=abc; path=/; SameSite=Lax; HttpOnly | theme=dark', 'cookies');
is_deeply($client->cookies, { sid => 'abc', theme => 'dark' }, 'which a client keeps');
$r = $client->get('/req');
is_deeply($r->json->{cookies}, { sid => 'abc', theme => 'dark' }, 'and sends back on the next request');
$client->get('/forget');
$r = $client->get('/req');
is_deeply($r->json->{cookies}, { sid => 'abc' }, 'a cookie set with a past expiry is deleted');

$r = $client->get('/go');
is($r->status . ' ' . $r->location, '302 /elsewhere', 'redirect defaults to 302');
is($r->content, '', 'with an empty body');
$r = $client->get('/moved');
is($r->status . ' ' . $r->location, '301 /new', 'redirect with a status');
$r = $client->get('/see-other');
is($r->status . ' ' . $r->location, '303 https://example.com/x?y=1', 'redirect to an absolute URL');

$r = $client->get('/file');
is(line($r), '200 ' . join('', 'a' .. 'z'), 'send_file');
my $etag = $r->header('etag');
like($etag, qr/^"[0-9a-f]+-1a"$/, 'with an ETag');
is($r->header('last-modified'), 'Tue, 14 Nov 2023 22:13:20 GMT', 'and Last-Modified');
is($r->header('content-type'), 'text/plain; charset=utf-8', 'type from the extension');
is($r->header('content-length'), 26, 'and the length');
is($r->header('accept-ranges'), 'bytes', 'ranges accepted');
is($client->get('/pic')->header('content-type'), 'image/png', 'the extension is case-insensitive');
is($client->get('/blob')->header('content-type'), 'application/octet-stream', 'no extension: octet-stream');
is($client->get('/file-typed')->header('content-type'), 'application/x-mine', 'content_type overrides');
$r = $client->get('/file', headers => { 'If-None-Match' => qq{"zzz", $etag} });
is(line($r), '304 ', 'If-None-Match hit is 304 without body');
is($r->header('etag'), $etag, 'and still carries the ETag');
ok(!defined $r->header('content-length'), 'and no Content-Length');
$r = $client->get('/file', headers => { 'If-None-Match' => "W/$etag" });
is($r->status, 304, 'a weak match is a match for If-None-Match');
$r = $client->get('/file', headers => { 'If-None-Match' => '*' });
is($r->status, 304, 'so is *');
$r = $client->get('/file', headers => { 'If-None-Match' => '"other"', 'If-Modified-Since' => 'Tue, 14 Nov 2023 22:13:20 GMT' });
is($r->status, 200, 'If-None-Match miss wins over If-Modified-Since');
$r = $client->get('/file', headers => { 'If-Modified-Since' => 'Wed, 15 Nov 2023 00:00:00 GMT' });
is($r->status, 304, 'If-Modified-Since not older than the file is 304');
$r = $client->get('/file', headers => { 'If-Modified-Since' => 'Mon, 13 Nov 2023 00:00:00 GMT' });
is($r->status, 200, 'If-Modified-Since older than the file is 200');
$r = $client->get('/file', headers => { 'If-Modified-Since' => 'yesterday' });
is($r->status, 200, 'an unreadable If-Modified-Since is ignored');
$r = $client->get('/file', headers => { Range => 'bytes=2-4' });
is(line($r) . ' ' . $r->header('content-range'), '206 cde bytes 2-4/26', 'Range a-b');
is($r->header('content-length'), 3, 'with the length of the part');
$r = $client->get('/file', headers => { Range => 'bytes=-3' });
is(line($r), '206 xyz', 'suffix Range');
$r = $client->get('/file', headers => { Range => 'bytes=24-' });
is(line($r), '206 yz', 'open Range');
$r = $client->get('/file', headers => { Range => 'bytes=20-100' });
is(line($r) . ' ' . $r->header('content-range'), '206 uvwxyz bytes 20-25/26', 'a Range past the end is cut to the file');
$r = $client->get('/file', headers => { Range => 'bytes=30-40' });
is($r->status . ' ' . $r->header('content-range'), '416 bytes */26', 'unsatisfiable Range is 416');
$r = $client->get('/file', headers => { Range => 'bytes=0-1', 'If-Range' => '"stale"' });
is($r->status, 200, 'If-Range with another ETag serves the whole file');
$r = $client->get('/file', headers => { Range => 'bytes=0-1', 'If-Range' => $etag });
is(line($r), '206 ab', 'If-Range with the current ETag serves the range');
$r = $client->head('/file');
is($r->status . ' ' . $r->header('content-length'), '200 26', 'HEAD of a file');
is(join('', $r->chunks), '', 'sends no bytes');
$r = $client->get('/missing-file');
is($r->status, 404, 'send_file of a missing file is 404');
$r = $client->get('/dir-file');
is($r->status, 404, 'send_file of a directory is 404');

$r = $client->get('/stream');
is($r->content, "part 1\npart 2\npart 3\n", 'all parts of a stream arrive');
is_deeply([ grep { length } $r->chunks ], [ "part 1\n", "part 2\n", "part 3\n" ], 'one body event per write');
is($r->header('content-type'), 'text/plain', 'with the given type');
ok(!defined $r->header('content-length'), 'and no Content-Length');
$r = $client->get('/stream-close');
is($r->content, Encode::encode('UTF-8', 'ü'), 'stream writes text as UTF-8');
is("$seen{closed} $seen{late_write}", '1 refused', 'close() ends it; later writes die');
@warnings = ();
ok(!eval { $client->get('/stream-dies'); 1 }, 'an exception after the response started cuts it short');
like($@, qr/before the final http\.response\.body/, 'the response is not ended as if complete');
like(join('', @warnings), qr/mid-stream failure/, 'and the error is logged');
$r = client($app, raise_app_errors => 0)->get('/stream-dies');
is(line($r), "200 first\n", 'what was sent before the failure');

$r = $client->get('/stash');
is($r->content, 'ann', 'stash is shared by middleware and handler');

@warnings = ();
$r = $client->get('/boom');
is(line($r), '500 Internal Server Error', 'production 500 is short');
unlike($r->content, qr/kaboom/, 'and does not show the error');
like(join('', @warnings), qr/error in ctx handling GET \/boom: kaboom/, 'the 500 is logged with the request');
$r = $client->get('/async-boom');
is($r->status, 500, 'an async handler failing is a 500 too');
$r = $dclient->get('/boom');
is($r->status, 500, 'development 500');
is($r->content_type, 'text/html', 'an HTML page');
like($r->content, qr{<pre>dev kaboom &#60;b&#62;\n</pre>}, 'shows the error, escaped');
like($r->content, qr{<code>GET /boom</code>}, 'and the request');
is(line($dclient->get('/e400')), '400 Bad Request: still short', 'development mode does not change $c->error pages');
$r = $client->get('/e404');
is(line($r), '404 Not Found', '$c->error(404)');
$r = $client->get('/e400');
is(line($r), '400 Bad Request: name is required', '$c->error(400, message)');
$r = $client->get('/e418');
is(line($r), '418 {"error":"teapot"}', 'custom error handler');
$r = $client->get('/abort');
is(line($r), '403 Forbidden: not yours', 'abort() is error()');
ok(!defined $r->header('x-lost'), 'headers set before the error are dropped');
$r = $client->get('/nothing');
is($r->status, 500, 'a handler that sends nothing gets a 500, not a hang');
$client->stop;
$dclient->stop;

# End to end on PAGI::Server: the server's framing of what the app sends.
subtest 'over a real socket' => sub {
    my ($server, $port) = serve($app);
    my $r = request($port, 'GET', '/stream');
    ok($r->{chunked}, 'a stream is sent chunked');
    is($r->{body}, "part 1\npart 2\npart 3\n", 'all parts arrive');
    $r = request($port, 'HEAD', '/file');
    is("$r->{status} $r->{header}{'content-length'}", '200 26', 'HEAD of a file: the length');
    is($r->{raw} =~ /\r\n\r\n(.*)\z/s && $1, '', 'and no body on the wire');
    $r = request($port, 'GET', '/file', headers => [ [ 'Range', 'bytes=2-4' ] ]);
    is("$r->{status} $r->{body}", '206 cde', 'a range of a file streamed by the server');
    my $boundary = 'XyZ123';
    my $mp = join "\r\n", "--$boundary", 'Content-Disposition: form-data; name="doc"; filename="r.txt"', '',
        'x' x 6000, "--$boundary--", '';
    $r = request($port, 'POST', '/upload', body => $mp, headers => [ [ 'Content-Type', "multipart/form-data; boundary=$boundary" ] ]);
    is("$r->{status} $r->{body}", '413 Payload Too Large', 'an upload over max_upload_size is 413 on the wire');
    stop_server($server);
};

done_testing;
