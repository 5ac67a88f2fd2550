# PAGI::Simple's static (PAGI-SPEC 9.1): a directory under a prefix, tried
# when no route matched, through PAGI::App::Directory; in process through
# PAGI::Test::Client, with one request over a real socket.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(start_server stop_server http_get);    # its import sets the alarm
use PAGI::Test::Client;
use PAGI::Simple;
use File::Temp ();

my $dir = File::Temp->newdir;
my $root = "$dir/public";
mkdir $root or die $!;
mkdir "$root/sub" or die $!;
mkdir "$root/docs" or die $!;
sub spew { my ($p, $c) = @_; open my $fh, '>', $p or die "$p: $!"; print {$fh} $c; close $fh }
spew("$root/app.css", "body { color: red }\n");
spew("$root/sub/page.html", "<p>page</p>\n");
spew("$root/docs/index.html", "<h1>docs</h1>\n");
spew("$root/.secret", "hidden\n");
spew("$dir/outside.txt", "outside\n");
symlink "$dir/outside.txt", "$root/escape.txt" or die $!;

my $app = PAGI::Simple->new(name => 'static test');
$app->get('/assets/route' => sub ($c) { $c->text('a route wins') });
$app->post('/assets/sub/page.html' => sub ($c) { $c->text('posted') });
$app->static('/assets' => $root);
$app->static('/listed' => { root => $root, index => undef });
$app->static('/all' => { root => $root, show_hidden => 1 });
my $client = PAGI::Test::Client->new(app => $app->to_app);

my $r = $client->get('/assets/app.css');
is($r->status, 200, 'a file under the prefix');
is($r->content, "body { color: red }\n", 'its bytes');
like($r->header('content-type') // '', qr{\Atext/css}, 'with its type');
ok(defined $r->header('etag'), 'and an ETag');
is($client->get('/assets/app.css', headers => [ 'if-none-match' => $r->header('etag') ])->status, 304, 'If-None-Match: 304');
my $part = $client->get('/assets/app.css', headers => [ range => 'bytes=0-3' ]);
is($part->status, 206, 'a Range: 206');
is($part->content, 'body', 'the range');
is($client->get('/listed/sub/page.html')->content, "<p>page</p>\n", 'a nested file');
is($client->get('/assets/docs/')->content, "<h1>docs</h1>\n", 'index.html for a directory');
is($client->get('/assets/route')->content, 'a route wins', 'a route under the prefix wins');
is($client->post('/assets/sub/page.html')->content, 'posted', 'so does a route for another method');
is($client->get('/assets/sub/page.html')->status, 405, 'and its path answers other methods with 405, as documented');
is($client->get('/assets/.secret')->status, 404, 'dot files are 404 by default');
is($client->get('/all/.secret')->content, "hidden\n", 'served with show_hidden');
is($client->get('/assets/escape.txt')->status, 403, 'a symlink leading outside the root is refused');
is($client->get('/assets/%2e%2e/outside.txt')->status, 403, 'an encoded .. is refused');
is($client->get('/assets/missing.txt')->status, 404, 'a missing file is 404');
my $listing = $client->get('/listed/docs/');
is($listing->status, 200, 'index => undef lists the directory');
like($listing->content, qr/index\.html/, 'naming its files');
is($client->get('/elsewhere')->status, 404, 'outside every prefix: the app 404');
ok(!eval { PAGI::Simple->new->static('/x' => "$dir/nope"); 1 }, 'a missing root croaks');
like($@, qr/not a directory/, 'saying so');

my ($server, $port) = start_server(app => $app->to_app);
my $wire = http_get($port, '/assets/app.css')->get;
is($wire->{status}, 200, 'over a real socket too');
is($wire->{body}, "body { color: red }\n", 'with the file body');
stop_server($server);

done_testing;
