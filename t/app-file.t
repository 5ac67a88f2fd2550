# PAGI::App::File, PAGI::App::Directory and PAGI::Middleware::Static over
# real sockets on PAGI::Server: MIME types, validators, 304, ranges, HEAD,
# traversal attempts (encoded and symlinked), the listing; and pagi-server
# with no app serving the directory it runs in.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use File::Temp ();
use Future::AsyncAwait;
use PAGI::Test::Server qw(start_server stop_server raw_exchange parse_responses);
use PAGI::Test::CLI qw(start_cli stop_cli http_raw);
use PAGI::App::File;
use PAGI::App::Directory;
use PAGI::Middleware::Builder;

my $tmp = File::Temp->newdir;
my $root = "$tmp/www";
my $outside = "$tmp/secret";
mkdir $_ or die "mkdir $_: $!" for $root, $outside, "$root/sub", "$root/b-dir";
sub write_file { my ($p, $c) = @_; open my $fh, '>', $p or die "$p: $!"; binmode $fh; print {$fh} $c; close $fh }
my $digits = join '', map { $_ % 10 } 0 .. 999;
write_file("$root/digits.txt", $digits);
write_file("$root/style.css", "body{}\n");
write_file("$root/page.html", "<p>hi</p>\n");
write_file("$root/data.json", "{}\n");
write_file("$root/empty.bin", '');
write_file("$root/sub/inner.txt", "inner\n");
write_file("$root/a<b>&.txt", "odd name\n");
write_file("$outside/passwd", "SECRET\n");
symlink("$outside/passwd", "$root/escape.txt") or die "symlink: $!";
symlink($outside, "$root/escape-dir") or die "symlink: $!";
symlink("$root/sub/inner.txt", "$root/inside-link.txt") or die "symlink: $!";
my $mtime = (stat "$root/digits.txt")[9];

sub request {
    my ($port, $target, %o) = @_;
    my $method = $o{method} // 'GET';
    my $head = join '', map { "$_: $o{headers}{$_}\r\n" } sort keys %{ $o{headers} || {} };
    my $bytes = raw_exchange($port, "$method $target HTTP/1.1\r\nHost: 127.0.0.1\r\n${head}Connection: close\r\n\r\n")->get;
    my ($r) = parse_responses($bytes, head => $method eq 'HEAD');
    return $r // { status => 0, header => {}, body => $bytes };
}

subtest 'PAGI::App::File' => sub {
    my ($server, $port) = start_server(app => PAGI::App::File->new(root => $root)->to_app);

    my $r = request($port, '/digits.txt');
    is($r->{status}, 200, 'GET a file: 200');
    is($r->{body}, $digits, 'the whole file');
    is($r->{header}{'content-type'}, 'text/plain; charset=utf-8', 'text/plain with a charset');
    is($r->{header}{'accept-ranges'}, 'bytes', 'Accept-Ranges: bytes');
    my $etag = $r->{header}{etag};
    like($etag, qr/\A"[0-9a-f]+-[0-9a-f]+"\z/, 'a strong ETag');
    is($r->{header}{'last-modified'}, PAGI::App::File::http_date($mtime), 'Last-Modified is the mtime');

    is(request($port, '/style.css')->{header}{'content-type'}, 'text/css; charset=utf-8', 'css');
    is(request($port, '/page.html')->{header}{'content-type'}, 'text/html; charset=utf-8', 'html');
    is(request($port, '/data.json')->{header}{'content-type'}, 'application/json', 'json');
    $r = request($port, '/empty.bin');
    is("$r->{status} $r->{header}{'content-length'} $r->{header}{'content-type'}", '200 0 application/octet-stream',
        'an empty file of unknown type: 200, length 0, application/octet-stream');

    $r = request($port, '/digits.txt', headers => { 'If-None-Match' => "\"nope\", $etag" });
    is($r->{status}, 304, 'If-None-Match listing the ETag: 304');
    is($r->{body}, '', 'no body');
    is($r->{header}{etag}, $etag, 'with the ETag');
    is(request($port, '/digits.txt', headers => { 'If-None-Match' => "W/$etag" })->{status}, 304, 'weak comparison');
    is(request($port, '/digits.txt', headers => { 'If-None-Match' => '"other"' })->{status}, 200, 'another ETag: 200');
    is(request($port, '/digits.txt', headers => { 'If-Modified-Since' => PAGI::App::File::http_date($mtime) })->{status},
        304, 'If-Modified-Since the mtime: 304');
    is(request($port, '/digits.txt', headers => { 'If-Modified-Since' => PAGI::App::File::http_date($mtime - 10) })->{status},
        200, 'If-Modified-Since before the mtime: 200');
    is(request($port, '/digits.txt', headers => { 'If-None-Match' => '"other"',
        'If-Modified-Since' => PAGI::App::File::http_date($mtime) })->{status}, 200, 'If-None-Match wins over If-Modified-Since');

    $r = request($port, '/digits.txt', headers => { Range => 'bytes=10-19' });
    is($r->{status}, 206, 'Range: 206');
    is($r->{body}, substr($digits, 10, 10), 'those bytes');
    is($r->{header}{'content-range'}, 'bytes 10-19/1000', 'Content-Range');
    is($r->{header}{'content-length'}, 10, 'Content-Length of the range');
    $r = request($port, '/digits.txt', headers => { Range => 'bytes=-5' });
    is("$r->{status} $r->{body} $r->{header}{'content-range'}", '206 56789 bytes 995-999/1000', 'suffix range');
    $r = request($port, '/digits.txt', headers => { Range => 'bytes=990-' });
    is("$r->{status} $r->{body}", '206 0123456789', 'open range');
    $r = request($port, '/digits.txt', headers => { Range => 'bytes=5000-' });
    is($r->{status}, 416, 'unsatisfiable range: 416');
    is($r->{header}{'content-range'}, 'bytes */1000', 'Content-Range: bytes */size');
    $r = request($port, '/digits.txt', headers => { Range => 'bytes=0-1,5-6' });
    is("$r->{status} " . length $r->{body}, '200 1000', 'several ranges: the whole file');
    $r = request($port, '/digits.txt', headers => { Range => 'bytes=0-1', 'If-Range' => '"stale"' });
    is($r->{status}, 200, 'If-Range with another ETag: the whole file');
    $r = request($port, '/digits.txt', headers => { Range => 'bytes=0-1', 'If-Range' => $etag });
    is("$r->{status} $r->{body}", '206 01', 'If-Range with the ETag: the range');

    $r = request($port, '/digits.txt', method => 'HEAD');
    is($r->{status}, 200, 'HEAD: 200');
    is($r->{header}{'content-length'}, 1000, 'with the length a GET would have');
    is($r->{body}, '', 'and no body');
    $r = request($port, '/digits.txt', method => 'POST');
    is($r->{status}, 405, 'POST: 405');
    is($r->{header}{allow}, 'GET, HEAD', 'Allow: GET, HEAD');

    is(request($port, '/missing.txt')->{status}, 404, 'missing: 404');
    is(request($port, '/digits.txt/')->{status}, 404, 'a file with a trailing slash: 404');
    is(request($port, '/sub')->{status}, 404, 'a directory: 404 (File does not list)');
    is(request($port, '/sub/inner.txt')->{body}, "inner\n", 'a file in a subdirectory');
    is(request($port, '/inside-link.txt')->{body}, "inner\n", 'a symlink staying inside the root is served');

    for my $attack ('/%2e%2e/secret/passwd', '/..%2f..%2fsecret/passwd', '/../secret/passwd', '/sub/../../secret/passwd',
                    '/%2E%2E/%2E%2E/secret/passwd', '/sub%2f..%2f..%2fsecret%2fpasswd', '/..%5csecret%5cpasswd',
                    '/escape.txt', '/escape-dir/passwd', '/digits.txt%00.css', '/.%2e/secret/passwd') {
        my $res = request($port, $attack);
        ok($res->{status} == 403 || $res->{status} == 404 || $res->{status} == 400, "$attack: refused ($res->{status})");
        unlike($res->{body} // '', qr/SECRET/, "$attack: not the file outside the root");
    }
    stop_server($server);
};

subtest 'content types without MIME::Types' => sub {
    local $PAGI::App::File::MIME_TYPES = 0;
    my $app = PAGI::App::File->new(root => $root, mime_types => { TXT => 'text/x-custom' });
    is($app->content_type('a.css'), 'text/css; charset=utf-8', 'the built-in table: css');
    is($app->content_type('a.JSON'), 'application/json', 'extensions compare case-insensitively');
    is($app->content_type('a.woff2'), 'font/woff2', 'woff2');
    is($app->content_type('a.txt'), 'text/x-custom; charset=utf-8', 'mime_types overrides');
    is($app->content_type('Makefile'), 'application/octet-stream', 'no extension: the default type');
    eval { PAGI::App::File->new(root => "$root/digits.txt") };
    like($@, qr/option 'root' .* is not a directory/, 'root must be a directory, named');
    eval { PAGI::App::File->new };
    like($@, qr/option 'root' is required/, 'root is required');
};

subtest 'PAGI::App::Directory' => sub {
    my ($server, $port) = start_server(app => PAGI::App::Directory->new(root => $root)->to_app);
    my $r = request($port, '/');
    is($r->{status}, 200, 'the root: 200');
    is($r->{header}{'content-type'}, 'text/html; charset=utf-8', 'HTML');
    my $body = $r->{body};
    like($body, qr{Index of /}, 'a title');
    unlike($body, qr{href="\.\./"}, 'no parent link at the root');
    like($body, qr{a&lt;b&gt;&amp;\.txt}, 'names are HTML-escaped');
    unlike($body, qr{<b>}, 'never raw');
    like($body, qr{href="\./a%3Cb%3E%26\.txt"}, 'links are percent-encoded');
    my @names = $body =~ m{<a href="\./[^"]*">([^<]*)</a>}g;
    is_deeply(\@names, [ 'b-dir/', 'sub/', 'a&lt;b&gt;&amp;.txt', 'data.json', 'digits.txt', 'empty.bin',
                         'inside-link.txt', 'page.html', 'style.css' ],
        'directories first, then files, each sorted; symlinks leading outside left out');

    $r = request($port, '/sub');
    is($r->{status}, 301, 'a directory without its slash: 301');
    is($r->{header}{location}, '/sub/', 'to the path with one');
    $r = request($port, '/sub/');
    like($r->{body}, qr{href="\.\./"}, 'a parent link below the root');
    like($r->{body}, qr{inner\.txt}, 'lists the subdirectory');
    is(request($port, '/sub/inner.txt')->{body}, "inner\n", 'files are served');
    is(request($port, '/digits.txt', headers => { Range => 'bytes=0-2' })->{body}, '012', 'with ranges');
    for my $attack ('/escape-dir/', '/%2e%2e/', '/..%2f', '/escape.txt') {
        my $res = request($port, $attack);
        ok($res->{status} == 403 || $res->{status} == 404, "$attack: refused ($res->{status})");
        unlike($res->{body}, qr/passwd|SECRET/, "$attack: nothing from outside the root");
    }
    stop_server($server);
};

subtest 'PAGI::Middleware::Static' => sub {
    my $inner = async sub {
        my ($scope, $receive, $send) = @_;
        await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
        await $send->({ type => 'http.response.body', body => "app saw $scope->{path}" });
    };
    my $app = builder {
        enable 'Static', path => '/static', root => $root;
        enable 'Static', path => qr{^/sub/}, root => $root, pass_through => 1;
        $inner;
    };
    my ($server, $port) = start_server(app => $app);
    is(request($port, '/static/digits.txt', headers => { Range => 'bytes=3-4' })->{body}, '34', 'the prefix is served from root');
    is(request($port, '/static/missing')->{status}, 404, 'a missing file under the prefix: 404');
    is(request($port, '/static/%2e%2e/secret/passwd')->{status}, 403, 'traversal under the prefix: 403');
    is(request($port, '/staticky')->{body}, 'app saw /staticky', 'a longer name is not the prefix');
    is(request($port, '/other')->{body}, 'app saw /other', 'other paths go to the app');
    is(request($port, '/sub/inner.txt')->{body}, "inner\n", 'a regular expression serves the whole path under root');
    is(request($port, '/sub/nothing')->{body}, 'app saw /sub/nothing', 'pass_through: a missing file goes to the app');
    stop_server($server);
};

subtest 'pagi-server with no app serves the current directory' => sub {
    my $child = start_cli([ '--no-access-log', '-q' ], dir => $root, timeout => 30);
    ok($child->{ready}, 'started with no app') or diag(PAGI::Test::CLI::stderr_of($child));
    if ($child->{ready}) {
        my $port = $child->{port};
        my ($r) = parse_responses(http_raw($port, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
        is($r && $r->{status}, 200, 'GET /: 200');
        like($r && $r->{body}, qr{digits\.txt}, 'a listing of the directory it runs in');
        ($r) = parse_responses(http_raw($port, "GET /digits.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=0-3\r\nConnection: close\r\n\r\n"));
        is($r && "$r->{status} $r->{body}", '206 0123', 'and its files, with ranges');
        ($r) = parse_responses(http_raw($port, "GET /%2e%2e/secret/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
        unlike($r ? $r->{body} : '', qr/SECRET/, 'never a file outside it');
    }
    stop_cli($child);
};

done_testing;
